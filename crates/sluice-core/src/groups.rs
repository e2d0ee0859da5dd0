//! Consumer groups (Kafka's classic protocol), protocol-agnostic: member
//! metadata and assignments are opaque bytes chosen by the clients' assignors.
//!
//! ```text
//!            join (new member, leader rejoins, member leaves or expires)
//!   Empty ──────────────▶ PreparingRebalance ──all joined / timeout──▶ CompletingRebalance
//!     ▲                        ▲                                             │ leader's SyncGroup
//!     └── last member leaves ──┴──────────── join, leave, expiry ──── Stable ◀┘
//! ```
//!
//! A rebalance completes when every known member has rejoined or the
//! largest rebalance timeout passes; members that did not rejoin are
//! removed. Members expire after `session_timeout` without a heartbeat,
//! join or sync. One lock guards every group; it is never held across an
//! `.await`: waiting members hold a oneshot receiver instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

mod migration;
pub use migration::UpgradingMember;

/// Why a group request was refused; front-ends map these to wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("generation does not match the group's")]
    IllegalGeneration,
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    #[error("a member id is required: rejoin with the one given")]
    MemberIdRequired,
    #[error("no protocol shared with the group's members")]
    InconsistentGroupProtocol,
    #[error("session timeout out of the allowed range")]
    InvalidSessionTimeout,
    #[error("the group has active members")]
    NonEmptyGroup,
    #[error("the group does not exist")]
    GroupIdNotFound,
    #[error("another member with the same group.instance.id took over")]
    FencedInstanceId,
    #[error("invalid group id")]
    InvalidGroupId,
}

/// Group states, as DescribeGroups and ListGroups name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A JoinGroup request.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member first gets an id and must rejoin with it.
    pub require_known_member_id: bool,
}

/// A member as the leader sees it in its JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

/// The answer to JoinGroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinResponse {
    pub error: Option<GroupError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only.
    pub members: Vec<JoinedMember>,
}

/// The answer to SyncGroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncResponse {
    pub error: Option<GroupError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

/// The coordinator's settings, as Kafka's broker configuration names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSettings {
    /// Shortest session timeout a member may ask for
    /// (`group.min.session.timeout.ms`).
    pub min_session_timeout: Duration,
    /// Longest session timeout a member may ask for
    /// (`group.max.session.timeout.ms`).
    pub max_session_timeout: Duration,
    /// How long the first join of an empty group waits for more members
    /// before the rebalance completes (`group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay: Duration,
}

impl Default for GroupSettings {
    /// Kafka's defaults: 6 s, 30 min and 3 s.
    fn default() -> Self {
        GroupSettings {
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(30 * 60),
            initial_rebalance_delay: Duration::from_secs(3),
        }
    }
}

/// How long a new member that must rejoin with its id is remembered.
const PENDING_MEMBER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// What a member handed back by a consumer group (a downgrade) owned
    /// there, until its leader gives it an assignment here: an upgrade
    /// before then starts from it.
    carried: crate::consumer_groups::Assignment,
    deadline: Instant,
    join_waiter: Option<oneshot::Sender<JoinResponse>>,
    sync_waiter: Option<oneshot::Sender<SyncResponse>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug)]
struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out by MEMBER_ID_REQUIRED, until they rejoin.
    pending: HashMap<String, Instant>,
    /// group.instance.id → member id of static members.
    instances: HashMap<String, String>,
    /// Bumped at every rebalance start, so a stale timer does nothing.
    rebalance_round: u64,
    /// The rebalance started from an empty group and waits out the initial
    /// delay (Kafka's `InitialDelayedJoin`): it completes only when the
    /// delay ends, even if every member has joined.
    initial_delay: bool,
    /// A new member joined during the current spell of the initial delay,
    /// which then runs once more.
    joined_during_delay: bool,
}

impl Group {
    fn new() -> Group {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            instances: HashMap::new(),
            rebalance_round: 0,
            initial_delay: false,
            joined_during_delay: false,
        }
    }

    /// A sign of life from a member: its session restarts. Returns the
    /// group's state and generation.
    fn touch(&mut self, member_id: &str) -> Result<(GroupState, i32), GroupError> {
        let member = self
            .members
            .get_mut(member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        member.deadline = Instant::now() + member.session_timeout;
        Ok((self.state, self.generation))
    }

    fn all_joined(&self) -> bool {
        self.members.values().all(|m| m.join_waiter.is_some())
    }

    /// The protocol every member supports with the most first-choice votes.
    fn choose_protocol(&self) -> Option<String> {
        let candidates: Vec<&String> = self
            .members
            .values()
            .next()?
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .collect();
        let mut votes: Vec<(usize, &String)> = candidates
            .iter()
            .map(|candidate| {
                let count = self
                    .members
                    .values()
                    .filter(|m| {
                        m.protocols
                            .iter()
                            .find(|(n, _)| candidates.contains(&n))
                            .is_some_and(|(n, _)| n == *candidate)
                    })
                    .count();
                (count, *candidate)
            })
            .collect();
        // Most votes first; ties keep the first member's preference order.
        votes.sort_by_key(|vote| std::cmp::Reverse(vote.0));
        votes.first().map(|(_, name)| (*name).clone())
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|(name, _)| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
    }

    fn remove_member(&mut self, member_id: &str) {
        if let Some(member) = self.members.remove(member_id) {
            if let Some(instance) = &member.group_instance_id {
                self.instances.remove(instance);
            }
            if let Some(waiter) = member.join_waiter {
                let _ = waiter.send(JoinResponse {
                    error: Some(GroupError::UnknownMemberId),
                    member_id: member_id.to_owned(),
                    ..JoinResponse::default()
                });
            }
            if let Some(waiter) = member.sync_waiter {
                let _ = waiter.send(SyncResponse {
                    error: Some(GroupError::UnknownMemberId),
                    ..SyncResponse::default()
                });
            }
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
    }
}

/// The coordinator of every consumer group on this broker.
#[derive(Debug)]
pub struct GroupCoordinator {
    groups: Mutex<HashMap<String, Group>>,
    next_member: AtomicU64,
    next_round: AtomicU64,
    settings: GroupSettings,
    this: Weak<GroupCoordinator>,
}

impl GroupCoordinator {
    pub fn new(settings: GroupSettings) -> Arc<GroupCoordinator> {
        Arc::new_cyclic(|this| GroupCoordinator {
            groups: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(1),
            next_round: AtomicU64::new(0),
            settings,
            this: this.clone(),
        })
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    fn new_member_id(&self, client_id: &str) -> String {
        let n = self.next_member.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{client_id}-{nanos:x}-{n}")
    }

    /// JoinGroup. Resolves when the rebalance this join takes part in
    /// completes (or at once for errors and the member-id handshake).
    pub async fn join(&self, request: JoinRequest) -> JoinResponse {
        let receiver = match self.join_locked(request) {
            Ok(receiver) => receiver,
            Err(response) => return *response,
        };
        receiver.await.unwrap_or(JoinResponse {
            error: Some(GroupError::RebalanceInProgress),
            ..JoinResponse::default()
        })
    }

    fn join_locked(
        &self,
        request: JoinRequest,
    ) -> Result<oneshot::Receiver<JoinResponse>, Box<JoinResponse>> {
        let refuse = |error, member_id: &str| {
            Box::new(JoinResponse {
                error: Some(error),
                member_id: member_id.to_owned(),
                generation: -1,
                ..JoinResponse::default()
            })
        };
        if request.group_id.is_empty() {
            return Err(refuse(GroupError::InvalidGroupId, &request.member_id));
        }
        let allowed = self.settings.min_session_timeout..=self.settings.max_session_timeout;
        if !allowed.contains(&request.session_timeout) {
            return Err(refuse(
                GroupError::InvalidSessionTimeout,
                &request.member_id,
            ));
        }
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            return Err(refuse(
                GroupError::InconsistentGroupProtocol,
                &request.member_id,
            ));
        }
        let mut groups = self.groups();
        let group = groups
            .entry(request.group_id.clone())
            .or_insert_with(Group::new);
        let now = Instant::now();
        group
            .pending
            .retain(|_, since| now.duration_since(*since) < PENDING_MEMBER_TIMEOUT);
        if !group.supports(&request.protocol_type, &request.protocols) {
            return Err(refuse(
                GroupError::InconsistentGroupProtocol,
                &request.member_id,
            ));
        }

        let mut member_id = request.member_id.clone();
        let mut replaced: Option<String> = None;
        if let Some(instance) = &request.group_instance_id {
            // A static member may come back under a new id; the old one is fenced.
            if let Some(old) = group.instances.get(instance).cloned()
                && old != member_id
            {
                if member_id.is_empty() {
                    member_id = self.new_member_id(&request.client_id);
                }
                if let Some(mut member) = group.members.remove(&old) {
                    if let Some(waiter) = member.join_waiter.take() {
                        let _ = waiter.send(*refuse(GroupError::FencedInstanceId, &old));
                    }
                    if let Some(waiter) = member.sync_waiter.take() {
                        let _ = waiter.send(SyncResponse {
                            error: Some(GroupError::FencedInstanceId),
                            ..SyncResponse::default()
                        });
                    }
                    group.members.insert(member_id.clone(), member);
                }
                if group.leader.as_deref() == Some(old.as_str()) {
                    group.leader = Some(member_id.clone());
                }
                group.instances.insert(instance.clone(), member_id.clone());
                replaced = Some(old);
            }
        }
        if member_id.is_empty() {
            member_id = self.new_member_id(&request.client_id);
            if request.require_known_member_id && request.group_instance_id.is_none() {
                group.pending.insert(member_id.clone(), now);
                return Err(refuse(GroupError::MemberIdRequired, &member_id));
            }
        } else if !group.members.contains_key(&member_id)
            && group.pending.remove(&member_id).is_none()
        {
            return Err(refuse(GroupError::UnknownMemberId, &member_id));
        }

        let was_empty = group.members.is_empty();
        let (sender, receiver) = oneshot::channel();
        let known = group.members.contains_key(&member_id);
        let unchanged = group
            .members
            .get(&member_id)
            .is_some_and(|m| m.protocols == request.protocols);
        let is_leader = group.leader.as_deref() == Some(member_id.as_str());
        if let Some(instance) = &request.group_instance_id {
            group.instances.insert(instance.clone(), member_id.clone());
        }
        let member = group
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                group_instance_id: request.group_instance_id.clone(),
                client_id: request.client_id.clone(),
                client_host: request.client_host.clone(),
                session_timeout: request.session_timeout,
                rebalance_timeout: request.rebalance_timeout,
                protocols: request.protocols.clone(),
                assignment: Bytes::new(),
                carried: Default::default(),
                deadline: now + request.session_timeout,
                join_waiter: None,
                sync_waiter: None,
            });
        member.client_id = request.client_id;
        member.client_host = request.client_host;
        member.session_timeout = request.session_timeout;
        member.rebalance_timeout = request.rebalance_timeout;
        member.protocols = request.protocols;
        member.deadline = now + member.session_timeout;
        if was_empty || group.protocol_type.is_none() {
            group.protocol_type = Some(request.protocol_type);
        }

        // A follower rejoining a stable group with nothing changed gets the
        // current generation back; no rebalance (Kafka does the same). So
        // does a static member that comes back under a new id, leader or not:
        // it is told the old id is the leader, so it does not run the
        // assignment again and SyncGroup hands it its stored one.
        if known && unchanged && group.state == GroupState::Stable {
            if let Some(old_id) = replaced.filter(|_| is_leader) {
                let mut answer = self.join_answer(group, &member_id);
                answer.leader = old_id;
                answer.members.clear();
                let _ = sender.send(answer);
                return Ok(receiver);
            }
            if !is_leader {
                let _ = sender.send(self.join_answer(group, &member_id));
                return Ok(receiver);
            }
        }
        if let Some(member) = group.members.get_mut(&member_id) {
            member.join_waiter = Some(sender);
        }
        if !known && group.initial_delay {
            group.joined_during_delay = true;
        }
        match group.state {
            GroupState::PreparingRebalance => {
                if !group.initial_delay && group.all_joined() {
                    self.complete_join(group);
                }
            }
            _ => self.prepare_rebalance(&request.group_id, group),
        }
        Ok(receiver)
    }

    /// Starts a rebalance: members have until the largest rebalance timeout
    /// to rejoin.
    fn prepare_rebalance(&self, group_id: &str, group: &mut Group) {
        // Syncs waiting on the old generation must rejoin.
        for member in group.members.values_mut() {
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(SyncResponse {
                    error: Some(GroupError::RebalanceInProgress),
                    ..SyncResponse::default()
                });
            }
        }
        let from_empty = group.state == GroupState::Empty;
        group.state = GroupState::PreparingRebalance;
        // Rounds are drawn coordinator-wide: a group of the same id made
        // anew (a downgrade) never matches an older group's timer.
        group.rebalance_round = self.next_round.fetch_add(1, Ordering::Relaxed) + 1;
        let timeout = group
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        let delay = self.settings.initial_rebalance_delay;
        if from_empty && !delay.is_zero() {
            // Kafka's InitialDelayedJoin: the first members of a new group
            // arrive one by one; waiting a little lets them share one
            // generation instead of rebalancing at each arrival.
            group.initial_delay = true;
            group.joined_during_delay = false;
            self.schedule_initial_delay(group_id, group, delay, timeout.saturating_sub(delay));
            return;
        }
        if group.all_joined() && !group.members.is_empty() {
            self.complete_join(group);
            return;
        }
        let round = group.rebalance_round;
        let this = self.this.clone();
        let group_id = group_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(coordinator) = this.upgrade() {
                coordinator.rebalance_timed_out(&group_id, round);
            }
        });
    }

    /// Waits `delay`, then either completes the join or, if a new member
    /// came meanwhile and `remaining` (of the rebalance timeout) allows,
    /// waits once more.
    fn schedule_initial_delay(
        &self,
        group_id: &str,
        group: &Group,
        delay: Duration,
        remaining: Duration,
    ) {
        let round = group.rebalance_round;
        let this = self.this.clone();
        let group_id = group_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(coordinator) = this.upgrade() {
                coordinator.initial_delay_elapsed(&group_id, round, remaining);
            }
        });
    }

    fn initial_delay_elapsed(&self, group_id: &str, round: u64, remaining: Duration) {
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(group_id) else {
            return;
        };
        if group.state != GroupState::PreparingRebalance
            || group.rebalance_round != round
            || !group.initial_delay
        {
            return;
        }
        if group.joined_during_delay && !remaining.is_zero() {
            group.joined_during_delay = false;
            let delay = self.settings.initial_rebalance_delay.min(remaining);
            self.schedule_initial_delay(group_id, group, delay, remaining - delay);
            return;
        }
        group.initial_delay = false;
        group.joined_during_delay = false;
        self.complete_with_joined(group_id, group);
    }

    fn rebalance_timed_out(&self, group_id: &str, round: u64) {
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(group_id) else {
            return;
        };
        if group.state != GroupState::PreparingRebalance || group.rebalance_round != round {
            return;
        }
        self.complete_with_joined(group_id, group);
    }

    /// Ends a rebalance with the members that rejoined; the others are removed.
    fn complete_with_joined(&self, group_id: &str, group: &mut Group) {
        let missing: Vec<String> = group
            .members
            .iter()
            .filter(|(_, m)| m.join_waiter.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for member_id in missing {
            tracing::debug!(group = group_id, member = %member_id, "member did not rejoin in time");
            group.remove_member(&member_id);
        }
        self.complete_join(group);
    }

    /// Every member has rejoined (or the rest timed out): a new generation.
    fn complete_join(&self, group: &mut Group) {
        if group.members.is_empty() {
            group.state = GroupState::Empty;
            group.generation += 1;
            group.protocol = None;
            group.leader = None;
            // The protocol type stays: ListGroups shows an emptied consumer
            // group as a consumer group, as Kafka does.
            return;
        }
        group.generation += 1;
        group.protocol = group.choose_protocol();
        if group
            .leader
            .as_ref()
            .is_none_or(|leader| !group.members.contains_key(leader))
        {
            group.leader = group.members.keys().next().cloned();
        }
        group.state = GroupState::CompletingRebalance;
        let now = Instant::now();
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for member_id in ids {
            let answer = self.join_answer(group, &member_id);
            if let Some(member) = group.members.get_mut(&member_id) {
                member.deadline = now + member.session_timeout;
                member.assignment = Bytes::new();
                if let Some(waiter) = member.join_waiter.take() {
                    let _ = waiter.send(answer);
                }
            }
        }
    }

    fn join_answer(&self, group: &Group, member_id: &str) -> JoinResponse {
        let protocol = group.protocol.clone().unwrap_or_default();
        let leader = group.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            group
                .members
                .iter()
                .map(|(id, m)| JoinedMember {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResponse {
            error: None,
            generation: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol.clone(),
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    /// SyncGroup. The leader's call carries every member's assignment;
    /// followers wait for it.
    pub async fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncResponse {
        let receiver = {
            let mut groups = self.groups();
            let refuse = |error| SyncResponse {
                error: Some(error),
                ..SyncResponse::default()
            };
            let Some(group) = groups.get_mut(group_id) else {
                return refuse(GroupError::UnknownMemberId);
            };
            if !group.members.contains_key(member_id) {
                return refuse(GroupError::UnknownMemberId);
            }
            if generation != group.generation {
                return refuse(GroupError::IllegalGeneration);
            }
            let answer = |group: &Group, assignment: Bytes| SyncResponse {
                error: None,
                protocol_type: group.protocol_type.clone(),
                protocol_name: group.protocol.clone(),
                assignment,
            };
            match group.state {
                GroupState::PreparingRebalance | GroupState::Empty | GroupState::Dead => {
                    return refuse(GroupError::RebalanceInProgress);
                }
                GroupState::Stable => {
                    let assignment = group
                        .members
                        .get(member_id)
                        .map(|m| m.assignment.clone())
                        .unwrap_or_default();
                    return answer(group, assignment);
                }
                GroupState::CompletingRebalance => {}
            }
            let (sender, receiver) = oneshot::channel();
            let now = Instant::now();
            if let Some(member) = group.members.get_mut(member_id) {
                member.deadline = now + member.session_timeout;
                member.sync_waiter = Some(sender);
            }
            if group.leader.as_deref() == Some(member_id) {
                let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                let ids: Vec<String> = group.members.keys().cloned().collect();
                for id in ids {
                    let assignment = given.remove(&id).unwrap_or_default();
                    let reply = answer(group, assignment.clone());
                    if let Some(member) = group.members.get_mut(&id) {
                        member.assignment = assignment;
                        member.carried.clear();
                        if let Some(waiter) = member.sync_waiter.take() {
                            let _ = waiter.send(reply);
                        }
                    }
                }
                group.state = GroupState::Stable;
            }
            receiver
        };
        receiver.await.unwrap_or(SyncResponse {
            error: Some(GroupError::RebalanceInProgress),
            ..SyncResponse::default()
        })
    }

    /// Heartbeat: keeps a member alive and tells it of a rebalance.
    ///
    /// # Errors
    /// [`GroupError::UnknownMemberId`], [`GroupError::IllegalGeneration`],
    /// [`GroupError::RebalanceInProgress`].
    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
    ) -> Result<(), GroupError> {
        let mut groups = self.groups();
        let group = groups
            .get_mut(group_id)
            .ok_or(GroupError::UnknownMemberId)?;
        let (state, current) = group.touch(member_id)?;
        match state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ if generation != current => Err(GroupError::IllegalGeneration),
            _ => Ok(()),
        }
    }

    /// LeaveGroup for each member id; a rebalance follows if others remain.
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Vec<Result<(), GroupError>> {
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(group_id) else {
            return members
                .iter()
                .map(|_| Err(GroupError::UnknownMemberId))
                .collect();
        };
        let mut results = Vec::new();
        let mut changed = false;
        for (member_id, instance) in members {
            let id = match instance {
                Some(instance) if member_id.is_empty() => group.instances.get(instance).cloned(),
                _ => Some(member_id.clone()),
            };
            match id.filter(|id| group.members.contains_key(id)) {
                Some(id) => {
                    group.remove_member(&id);
                    changed = true;
                    results.push(Ok(()));
                }
                None => results.push(Err(GroupError::UnknownMemberId)),
            }
        }
        if changed {
            self.after_departure(group_id, group);
        }
        results
    }

    fn after_departure(&self, group_id: &str, group: &mut Group) {
        match group.state {
            GroupState::PreparingRebalance if !group.initial_delay && group.all_joined() => {
                self.complete_join(group)
            }
            GroupState::PreparingRebalance => {}
            _ if group.members.is_empty() => {
                group.state = GroupState::Empty;
                group.protocol = None;
                group.leader = None;
                group.generation += 1;
            }
            _ => self.prepare_rebalance(group_id, group),
        }
    }

    /// Removes members whose session expired; call periodically.
    pub fn expire_members(&self) {
        let now = Instant::now();
        let mut groups = self.groups();
        for (group_id, group) in groups.iter_mut() {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.join_waiter.is_none() && m.sync_waiter.is_none() && m.deadline < now
                })
                .map(|(id, _)| id.clone())
                .collect();
            if expired.is_empty() {
                continue;
            }
            for member_id in &expired {
                tracing::info!(group = %group_id, member = %member_id, "member session expired");
                group.remove_member(member_id);
            }
            self.after_departure(group_id, group);
        }
    }

    /// Checks that a commit comes from a current member, or from a "simple"
    /// consumer (no generation) of a group with no members.
    ///
    /// # Errors
    /// [`GroupError::UnknownMemberId`], [`GroupError::IllegalGeneration`],
    /// [`GroupError::RebalanceInProgress`].
    pub fn check_commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
    ) -> Result<(), GroupError> {
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(group_id) else {
            return Ok(());
        };
        if generation < 0 && member_id.is_empty() {
            return if group.members.is_empty() {
                Ok(())
            } else {
                Err(GroupError::UnknownMemberId)
            };
        }
        let (state, current) = group.touch(member_id)?;
        if generation != current {
            return Err(GroupError::IllegalGeneration);
        }
        // As Kafka: a member may still commit what it processed while the
        // group prepares a rebalance, but not between the new generation and
        // its assignment (CompletingRebalance).
        if state == GroupState::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Groups with their protocol type and state, for ListGroups.
    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        let mut listed: Vec<_> = self
            .groups()
            .iter()
            .map(|(id, g)| {
                (
                    id.clone(),
                    g.protocol_type.clone().unwrap_or_default(),
                    g.state,
                )
            })
            .collect();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        listed
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let groups = self.groups();
        let group = groups.get(group_id)?;
        let protocol = group.protocol.clone().unwrap_or_default();
        Some(GroupDescription {
            group_id: group_id.to_owned(),
            state: group.state,
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: group
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Forgets an empty group (DeleteGroups).
    ///
    /// # Errors
    /// [`GroupError::NonEmptyGroup`] while it has members.
    pub fn remove_if_empty(&self, group_id: &str) -> Result<(), GroupError> {
        let mut groups = self.groups();
        match groups.get(group_id) {
            Some(group) if !group.members.is_empty() => Err(GroupError::NonEmptyGroup),
            _ => {
                groups.remove(group_id);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(group_id: &str, session_timeout: Duration) -> JoinRequest {
        JoinRequest {
            group_id: group_id.to_owned(),
            member_id: String::new(),
            group_instance_id: None,
            client_id: "test".to_owned(),
            client_host: "127.0.0.1".to_owned(),
            session_timeout,
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: "consumer".to_owned(),
            protocols: vec![("range".to_owned(), Bytes::new())],
            require_known_member_id: false,
        }
    }

    /// A join of a new member to `group`, running in its own task.
    fn spawn_join(
        coordinator: &Arc<GroupCoordinator>,
        group: &str,
        session_timeout: Duration,
    ) -> tokio::task::JoinHandle<JoinResponse> {
        let coordinator = Arc::clone(coordinator);
        let request = request(group, session_timeout);
        tokio::spawn(async move { coordinator.join(request).await })
    }

    fn settings(initial_rebalance_delay: Duration) -> GroupSettings {
        GroupSettings {
            initial_rebalance_delay,
            ..GroupSettings::default()
        }
    }

    #[tokio::test]
    async fn session_timeouts_outside_the_configured_range_are_refused() {
        let coordinator = GroupCoordinator::new(settings(Duration::ZERO));
        for (millis, refused) in [
            (5_999, true),
            (6_000, false),
            (1_800_000, false),
            (1_800_001, true),
        ] {
            let answer = coordinator
                .join(request(
                    &format!("g{millis}"),
                    Duration::from_millis(millis),
                ))
                .await;
            let expected = refused.then_some(GroupError::InvalidSessionTimeout);
            assert_eq!(answer.error, expected, "session timeout {millis} ms");
        }
    }

    #[tokio::test]
    async fn members_joining_within_the_initial_delay_share_one_generation() {
        let coordinator = GroupCoordinator::new(settings(Duration::from_millis(300)));
        let first = spawn_join(&coordinator, "g", Duration::from_secs(10));
        tokio::task::yield_now().await;
        let second = coordinator
            .join(request("g", Duration::from_secs(10)))
            .await;
        let first = first.await.expect("first join");
        assert_eq!((first.error, second.error), (None, None));
        assert_eq!((first.generation, second.generation), (1, 1));
        assert_eq!(first.leader, second.leader);
    }

    #[tokio::test]
    async fn without_the_initial_delay_the_first_member_joins_alone() {
        let coordinator = GroupCoordinator::new(settings(Duration::ZERO));
        let first = coordinator
            .join(request("g", Duration::from_secs(10)))
            .await;
        assert_eq!(
            (first.error, first.generation, first.members.len()),
            (None, 1, 1)
        );
    }

    // Simulated time: the runtime's clock is paused and jumps ahead to the
    // next timer whenever every task waits, so these take no real time.

    /// Joins as a new member and completes the rebalance with an empty
    /// assignment: a Stable group with one member at generation 1.
    async fn stable_member(coordinator: &GroupCoordinator, group: &str) -> (String, i32) {
        let joined = coordinator
            .join(request(group, Duration::from_secs(10)))
            .await;
        assert_eq!(joined.error, None);
        let synced = coordinator
            .sync(group, joined.generation, &joined.member_id, Vec::new())
            .await;
        assert_eq!(synced.error, None);
        (joined.member_id, joined.generation)
    }

    fn state(coordinator: &GroupCoordinator, group: &str) -> GroupState {
        coordinator
            .describe(group)
            .map_or(GroupState::Dead, |g| g.state)
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_does_not_rejoin_is_dropped_when_the_rebalance_times_out() {
        let coordinator = GroupCoordinator::new(settings(Duration::ZERO));
        let (old, generation) = stable_member(&coordinator, "g").await;
        let started = Instant::now();
        let newcomer = spawn_join(&coordinator, "g", Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(state(&coordinator, "g"), GroupState::PreparingRebalance);
        assert_eq!(
            coordinator.heartbeat("g", generation, &old),
            Err(GroupError::RebalanceInProgress),
            "the old member is told to rejoin"
        );
        // It never rejoins: the rebalance completes at its timeout (10 s)
        // without it.
        let joined = newcomer.await.expect("join");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{waited:?}"
        );
        assert_eq!((joined.error, joined.generation), (None, generation + 1));
        assert_eq!(joined.members.len(), 1, "the leader sees only itself");
        assert_eq!(
            coordinator.heartbeat("g", generation, &old),
            Err(GroupError::UnknownMemberId)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_expires_after_its_session_timeout_without_heartbeats() {
        let coordinator = GroupCoordinator::new(settings(Duration::ZERO));
        let (member, generation) = stable_member(&coordinator, "g").await;
        // Heartbeats keep it: 9 s of silence, then one.
        tokio::time::sleep(Duration::from_secs(9)).await;
        coordinator.expire_members();
        assert_eq!(coordinator.heartbeat("g", generation, &member), Ok(()));
        tokio::time::sleep(Duration::from_secs(9)).await;
        coordinator.expire_members();
        assert_eq!(state(&coordinator, "g"), GroupState::Stable);
        // Then more than the 10 s session timeout of silence.
        tokio::time::sleep(Duration::from_millis(1_001)).await;
        coordinator.expire_members();
        assert_eq!(
            coordinator.heartbeat("g", generation, &member),
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(state(&coordinator, "g"), GroupState::Empty);
    }

    #[tokio::test(start_paused = true)]
    async fn the_initial_delay_holds_the_first_rebalance_for_later_joiners() {
        let coordinator = GroupCoordinator::new(settings(Duration::from_secs(3)));
        let started = Instant::now();
        let first = spawn_join(&coordinator, "g", Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let second = coordinator
            .join(request("g", Duration::from_secs(10)))
            .await;
        let first = first.await.expect("first join");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(3), "{waited:?}");
        assert_eq!((first.generation, second.generation), (1, 1));
        assert_eq!(first.leader, second.leader);
        let leader_view = if first.member_id == first.leader {
            &first
        } else {
            &second
        };
        assert_eq!(leader_view.members.len(), 2);
    }
}
