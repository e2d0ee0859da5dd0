//! Consumer groups' membership kept where their offsets are, as Kafka
//! keeps its group records in `__consumer_offsets`: a snapshot of each
//! group (epochs, members, their subscriptions, assignments and the
//! target) stored as a committed offset of the group itself under the
//! reserved topic [`MEMBERSHIP_TOPIC`], in the offsets log a cluster
//! replicates. A coordinator that restarts, or a node that becomes the
//! group's coordinator, loads it on the group's first request: members go
//! on at their epochs instead of rejoining, and a partition keeps one
//! owner across the move. A snapshot is stored whenever it changed, before
//! the request that changed it is answered.
//!
//! Each group in memory remembers the coordinator epoch it was loaded or
//! made in; one found under another epoch (the node stopped coordinating
//! the group and took it back) is dropped and loaded again.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::classic::ClassicMeta;
use super::{Assignment, Assignor, ConsumerGroups, Group, Member, MemberState, TopicId};

/// The reserved topic of a group's membership snapshot in its offsets.
pub const MEMBERSHIP_TOPIC: &str = "__sluice_membership";

/// Where the broker reads a group's stored membership from: `None` when
/// this node does not coordinate the group, else the coordinator epoch and,
/// when asked for (`true`), the stored snapshot, if any. Most calls need
/// only the epoch: the group is held already.
pub type MembershipLoader = dyn Fn(&str, bool) -> Option<(i32, Option<String>)> + Send + Sync;

/// The loader as the coordinator keeps it.
pub(super) struct Loader(Box<MembershipLoader>);

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Loader")
    }
}

fn hex(id: &TopicId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<TopicId> {
    let mut id = [0u8; 16];
    if text.len() != 32 {
        return None;
    }
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(id)
}

fn stored_assignment(assignment: &Assignment) -> BTreeMap<String, Vec<i32>> {
    assignment
        .iter()
        .map(|(topic, partitions)| (hex(topic), partitions.iter().copied().collect()))
        .collect()
}

fn loaded_assignment(stored: &BTreeMap<String, Vec<i32>>) -> Option<Assignment> {
    stored
        .iter()
        .map(|(topic, partitions)| Some((unhex(topic)?, partitions.iter().copied().collect())))
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredGroup {
    epoch: i32,
    assignment_epoch: i32,
    assignor: String,
    /// Subscribed topics: name, id (hex), partition count.
    subscribed: Vec<(String, String, u32)>,
    target: BTreeMap<String, BTreeMap<String, Vec<i32>>>,
    members: BTreeMap<String, StoredMember>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredMember {
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    epoch: i32,
    previous_epoch: i32,
    /// `stable`, `unrevoked` or `unreleased`.
    state: String,
    assigned: BTreeMap<String, Vec<i32>>,
    revoking: BTreeMap<String, Vec<i32>>,
    names: Vec<String>,
    regex: Option<String>,
    rebalance_timeout_ms: u64,
    server_assignor: Option<String>,
    classic: Option<StoredClassic>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredClassic {
    session_timeout_ms: u64,
    /// (name, metadata as hex).
    protocols: Vec<(String, String)>,
}

impl Group {
    /// The group as stored: `None` when it has no members (nothing to
    /// keep; a stored empty text forgets an earlier snapshot).
    fn stored_text(&self) -> String {
        if self.members.is_empty() {
            return String::new();
        }
        let stored = StoredGroup {
            epoch: self.epoch,
            assignment_epoch: self.assignment_epoch,
            assignor: self.assignor.name().to_owned(),
            subscribed: self
                .subscribed
                .iter()
                .map(|(name, (id, count))| (name.clone(), hex(id), *count))
                .collect(),
            target: self
                .target
                .iter()
                .map(|(id, assignment)| (id.clone(), stored_assignment(assignment)))
                .collect(),
            members: self
                .members
                .iter()
                .map(|(id, m)| {
                    (
                        id.clone(),
                        StoredMember {
                            instance_id: m.instance_id.clone(),
                            rack_id: m.rack_id.clone(),
                            client_id: m.client_id.clone(),
                            client_host: m.client_host.clone(),
                            epoch: m.epoch,
                            previous_epoch: m.previous_epoch,
                            state: match m.state {
                                MemberState::Stable => "stable",
                                MemberState::UnrevokedPartitions => "unrevoked",
                                MemberState::UnreleasedPartitions => "unreleased",
                            }
                            .to_owned(),
                            assigned: stored_assignment(&m.assigned),
                            revoking: stored_assignment(&m.revoking),
                            names: m.names.clone(),
                            regex: m.regex.as_ref().map(|(pattern, _)| pattern.clone()),
                            rebalance_timeout_ms: u64::try_from(m.rebalance_timeout.as_millis())
                                .unwrap_or(u64::MAX),
                            server_assignor: m.server_assignor.map(|a| a.name().to_owned()),
                            classic: m.classic.as_ref().map(|meta| StoredClassic {
                                session_timeout_ms: u64::try_from(meta.session_timeout.as_millis())
                                    .unwrap_or(u64::MAX),
                                protocols: meta
                                    .protocols
                                    .iter()
                                    .map(|(name, metadata)| {
                                        (
                                            name.clone(),
                                            metadata.iter().map(|b| format!("{b:02x}")).collect(),
                                        )
                                    })
                                    .collect(),
                            }),
                        },
                    )
                })
                .collect(),
        };
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// A group from its stored text, its members' sessions (and pending
    /// revocations) starting `now`; `None` for an empty or unreadable one.
    fn from_stored(text: &str, now: Instant, session_timeout: Duration) -> Option<Group> {
        if text.is_empty() {
            return None;
        }
        let stored: StoredGroup = serde_json::from_str(text).ok()?;
        let mut group = Group::new(Assignor::parse(&stored.assignor).unwrap_or(Assignor::Uniform));
        group.epoch = stored.epoch;
        group.assignment_epoch = stored.assignment_epoch;
        group.subscribed = stored
            .subscribed
            .iter()
            .map(|(name, id, count)| Some((name.clone(), (unhex(id)?, *count))))
            .collect::<Option<_>>()?;
        group.target = stored
            .target
            .iter()
            .map(|(id, assignment)| Some((id.clone(), loaded_assignment(assignment)?)))
            .collect::<Option<_>>()?;
        for (id, m) in stored.members {
            let classic = match m.classic {
                Some(c) => Some(ClassicMeta::new(
                    Duration::from_millis(c.session_timeout_ms),
                    c.protocols
                        .iter()
                        .map(|(name, metadata)| {
                            let bytes: Option<Vec<u8>> = (0..metadata.len() / 2)
                                .map(|i| {
                                    u8::from_str_radix(metadata.get(i * 2..i * 2 + 2)?, 16).ok()
                                })
                                .collect();
                            Some((name.clone(), Bytes::from(bytes?)))
                        })
                        .collect::<Option<Vec<_>>>()?,
                )),
                None => None,
            };
            let rebalance_timeout = Duration::from_millis(m.rebalance_timeout_ms);
            let state = match m.state.as_str() {
                "unrevoked" => MemberState::UnrevokedPartitions,
                "unreleased" => MemberState::UnreleasedPartitions,
                _ => MemberState::Stable,
            };
            let session = classic
                .as_ref()
                .map_or(session_timeout, ClassicMeta::session_timeout);
            let mut member = Member::new(&super::Heartbeat::default(), now);
            member.instance_id = m.instance_id;
            member.rack_id = m.rack_id;
            member.client_id = m.client_id;
            member.client_host = m.client_host;
            member.epoch = m.epoch;
            member.previous_epoch = m.previous_epoch;
            member.state = state;
            member.assigned = loaded_assignment(&m.assigned)?;
            member.revoking = loaded_assignment(&m.revoking)?;
            member.names = m.names;
            member.regex = match m.regex {
                Some(pattern) => Some((pattern.clone(), super::subscription_regex(&pattern).ok()?)),
                None => None,
            };
            member.rebalance_timeout = rebalance_timeout;
            member.server_assignor = m.server_assignor.as_deref().and_then(Assignor::parse);
            member.session_deadline = now + session;
            member.revocation_deadline =
                (state == MemberState::UnrevokedPartitions).then(|| now + rebalance_timeout);
            member.classic = classic;
            group.members.insert(id, member);
        }
        (!group.members.is_empty()).then_some(group)
    }
}

impl ConsumerGroups {
    /// Hands over where stored memberships are read from (once).
    pub fn attach_loader(&self, loader: Box<MembershipLoader>) {
        let _ = self.loader.set(Loader(loader));
    }

    /// Makes `groups` hold `group_id` as this node coordinates it now:
    /// a group made or loaded under another coordinator epoch is dropped,
    /// and a group this node does not hold is loaded from its stored
    /// membership, if any.
    /// Returns the coordinator epoch (`None` without stored membership,
    /// or when this node does not coordinate the group).
    pub(super) fn load(
        &self,
        groups: &mut std::collections::HashMap<String, Group>,
        group_id: &str,
        now: Instant,
    ) -> Option<i32> {
        let loader = self.loader.get()?;
        let (epoch, _) = (loader.0)(group_id, false)?;
        if groups
            .get(group_id)
            .is_some_and(|group| group.coordinator_epoch != Some(epoch))
        {
            tracing::info!(
                group = group_id,
                epoch,
                "consumer group held from another coordinator epoch: loaded again"
            );
            groups.remove(group_id);
            self.stored().remove(group_id);
        }
        if groups.contains_key(group_id) {
            return Some(epoch);
        }
        let text = (loader.0)(group_id, true)
            .filter(|(now_epoch, _)| *now_epoch == epoch)
            .and_then(|(_, text)| text)
            .unwrap_or_default();
        let session = self.settings(group_id).session_timeout;
        if let Some(mut group) = Group::from_stored(&text, now, session) {
            tracing::info!(
                group = group_id,
                members = group.members.len(),
                epoch = group.epoch,
                "consumer group loaded from its stored membership"
            );
            group.coordinator_epoch = Some(epoch);
            groups.insert(group_id.to_owned(), group);
        }
        if !text.is_empty() {
            self.stored().insert(group_id.to_owned(), text);
        }
        Some(epoch)
    }

    fn stored(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.stored.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serialises stores: held from [`ConsumerGroups::changed`] until
    /// what it took is stored, so an older snapshot never lands after a
    /// newer one.
    pub fn storing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.storing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The snapshots of `group_id` (or of every group, `None`) that differ
    /// from what was last stored: (group, text; empty forgets it).
    pub fn changed(&self, group_id: Option<&str>) -> Vec<(String, String)> {
        let groups = self.groups();
        let stored = self.stored();
        let mut ids: Vec<String> = match group_id {
            Some(id) => vec![id.to_owned()],
            None => groups.keys().chain(stored.keys()).cloned().collect(),
        };
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| {
                let text = groups.get(&id).map(Group::stored_text).unwrap_or_default();
                let before = stored.get(&id).map_or("", String::as_str);
                (text != before).then_some((id, text))
            })
            .collect()
    }

    /// Whether `group_id`'s membership changed since it was last stored.
    pub fn needs_store(&self, group_id: &str) -> bool {
        !self.changed(Some(group_id)).is_empty()
    }

    /// `text` of `group_id` is stored now.
    pub fn mark_stored(&self, group_id: &str, text: String) {
        if text.is_empty() {
            self.stored().remove(group_id);
        } else {
            self.stored().insert(group_id.to_owned(), text);
        }
    }

    /// Forgets the groups `keep` refuses (this node no longer coordinates
    /// them): a later coordinator loads them from what is stored.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        // Each id decided once, so a group and its stored text go together.
        let ids: Vec<String> = {
            let groups = self.groups();
            let stored = self.stored();
            groups.keys().chain(stored.keys()).cloned().collect()
        };
        let gone: std::collections::HashSet<String> =
            ids.into_iter().filter(|id| !keep(id)).collect();
        if gone.is_empty() {
            return;
        }
        let mut groups = self.groups();
        let mut stored = self.stored();
        groups.retain(|id, _| !gone.contains(id));
        stored.retain(|id, _| !gone.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer_groups::{ConsumerGroupSettings, Heartbeat, TopicCatalog};

    fn catalog() -> TopicCatalog {
        let mut catalog = TopicCatalog::new();
        catalog.insert("orders", [1; 16], 4, false);
        catalog
    }

    fn join(id: &str) -> Heartbeat {
        Heartbeat {
            group_id: "g".to_owned(),
            member_id: id.to_owned(),
            member_epoch: 0,
            rebalance_timeout_ms: 5_000,
            subscribed_names: Some(vec!["orders".to_owned()]),
            subscribed_regex: Some(String::new()),
            owned: Some(Assignment::new()),
            ..Heartbeat::default()
        }
    }

    /// A group stored by one coordinator is loaded by the next with its
    /// members at their epochs and assignments: their heartbeats go on.
    #[test]
    fn a_stored_membership_is_loaded_by_the_next_coordinator()
    -> Result<(), crate::consumer_groups::ConsumerGroupError> {
        let now = Instant::now();
        let first =
            ConsumerGroups::new(ConsumerGroupSettings::default(), std::sync::Arc::default());
        let a = first.heartbeat(join("a"), &catalog(), now)?;
        let changed = first.changed(Some("g"));
        let [(group, text)] = changed.as_slice() else {
            panic!("one snapshot to store: {changed:?}");
        };
        assert_eq!(group, "g");
        first.mark_stored("g", text.clone());
        assert!(
            first.changed(Some("g")).is_empty(),
            "stored: nothing changed since"
        );

        let next = ConsumerGroups::new(ConsumerGroupSettings::default(), std::sync::Arc::default());
        let stored = text.clone();
        next.attach_loader(Box::new(move |_, text| {
            Some((7, text.then(|| stored.clone())))
        }));
        let beat = Heartbeat {
            group_id: "g".to_owned(),
            member_id: "a".to_owned(),
            member_epoch: a.member_epoch,
            rebalance_timeout_ms: -1,
            owned: a.assignment.clone(),
            ..Heartbeat::default()
        };
        let answer = next.heartbeat(beat, &catalog(), now)?;
        assert_eq!(answer.member_epoch, a.member_epoch, "no rejoin: same epoch");
        assert!(next.changed(Some("g")).is_empty(), "loaded as stored");
        assert_eq!(
            next.describe("g").map(|d| d.members.len()),
            Some(1),
            "the member is known"
        );
        Ok(())
    }
}
