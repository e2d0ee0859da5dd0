//! A partition replicated over several nodes, the way Kafka does it: the
//! leader takes produce requests; followers fetch from it (Kafka Fetch with
//! their replica id) and append what they get unchanged; the leader keeps
//! each follower's log end from its fetch offsets, and the high watermark
//! is the smallest log end of the in-sync replicas (a replica counts what
//! it has made durable under `log.durability = always`). acks=all waits
//! for the high watermark to pass the batch. A follower's high watermark
//! is the leader's, as its fetch responses carry it, capped by its own end.
//!
//! The in-sync set comes from the metadata (the controller commits every
//! change); the leader proposes a shrink for a follower that has not
//! caught up for `replica.lag.time.max.ms` and a grow for one that has.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sluice_types::Offset;
use tokio::sync::{Notify, watch};

/// Kafka's `replica.lag.time.max.ms` default.
pub const REPLICA_LAG_MAX: Duration = Duration::from_secs(30);

/// How a wait for the in-sync replicas ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reached {
    Yes,
    TimedOut,
    /// Another node leads now (the records may be lost).
    NoLongerLeader(i32),
}

/// A partition's replication as this node sees it.
#[derive(Debug)]
pub(crate) struct Replication {
    node: i32,
    /// The leader; changed by the controller (through the metadata).
    leader: AtomicI32,
    state: Mutex<State>,
    /// The replicated high watermark; only moves forward.
    high_watermark: watch::Sender<i64>,
    /// On the leader: its log end when it took the lead (Kafka's leader
    /// epoch start offset). Until the high watermark reaches it, offsets
    /// are not answered (OFFSET_NOT_AVAILABLE), or a client could see the
    /// end go back from what the former leader acknowledged.
    leader_start: AtomicI64,
    /// Wakes blocking waiters when the high watermark moves.
    moved: (Mutex<()>, Condvar),
    /// Wakes followers' fetches waiting on the leader for new data, as
    /// soon as it is written (before it is synced).
    pub(crate) written: Notify,
    /// In-sync set changes applied while this node led: fewer replicas,
    /// more replicas (Kafka's IsrShrinksPerSec and IsrExpandsPerSec).
    shrinks: AtomicU64,
    expands: AtomicU64,
}

/// How a replicated partition fares, as its leader sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicationStats {
    /// In-sync set changes applied while this node led.
    pub in_sync_shrinks: u64,
    pub in_sync_expands: u64,
    /// On the leader: records the furthest-behind follower lacks, and how
    /// long since the longest-lagging follower last caught up (ms).
    pub follower_lag_records: u64,
    pub follower_lag_ms: u64,
}

#[derive(Debug)]
struct State {
    /// Changed by the controller when the partition moves.
    replicas: Vec<i32>,
    in_sync: Vec<i32>,
    /// On the leader: followers it asked the controller to add to the
    /// in-sync replicas, counted toward the high watermark from the ask
    /// until the answer (Kafka's maximal ISR): the controller may elect
    /// one as soon as the change commits, so nothing may be acknowledged
    /// meanwhile that it lacks.
    joining: Vec<i32>,
    /// On the leader: the in-sync change it asked for (wanted, decided on)
    /// whose answer never came (the metadata quorum timed out). It may
    /// still commit, so it is asked again and its additions keep counting
    /// until the metadata's set moves off the one it was decided on (it
    /// committed, or no longer can) or the leader changes, as Kafka's
    /// leader keeps a pending AlterPartition until it is answered.
    unanswered: Option<(Vec<i32>, Vec<i32>)>,
    followers: BTreeMap<i32, Follower>,
}

#[derive(Debug, Clone, Copy)]
struct Follower {
    /// Where its log ends, from its last fetch.
    end: Offset,
    /// When it last asked for the leader's end (it had everything).
    caught_up: Instant,
    /// It fetched from this leader since it leads: only then does its end
    /// say anything (a dead follower's 0 "reaches" an empty partition's
    /// high watermark).
    fetched: bool,
}

impl Replication {
    /// The replication of a partition with `replicas`, led by `leader`,
    /// with `in_sync`, on node `node`, starting from `high_watermark`.
    pub(crate) fn new(
        node: i32,
        replicas: Vec<i32>,
        leader: i32,
        in_sync: Vec<i32>,
        high_watermark: Offset,
    ) -> Replication {
        let followers = fresh_followers(&replicas, leader);
        Replication {
            node,
            leader: AtomicI32::new(leader),
            state: Mutex::new(State {
                replicas,
                in_sync,
                joining: Vec::new(),
                unanswered: None,
                followers,
            }),
            high_watermark: watch::Sender::new(high_watermark.get()),
            leader_start: AtomicI64::new(0),
            moved: (Mutex::new(()), Condvar::new()),
            written: Notify::new(),
            shrinks: AtomicU64::new(0),
            expands: AtomicU64::new(0),
        }
    }

    /// A new leader (this node or another): followers start over; waiters
    /// for the high watermark are woken (a demoted leader's fail).
    /// `log_end` is this node's log end, where a new leader's epoch starts.
    pub(crate) fn change_leader(
        &self,
        leader: i32,
        in_sync: Vec<i32>,
        own_end: Offset,
        log_end: Offset,
    ) {
        self.leader.store(leader, Ordering::Release);
        if leader == self.node {
            self.leader_start.store(log_end.get(), Ordering::Release);
        }
        {
            let mut state = self.state();
            state.followers = fresh_followers(&state.replicas, leader);
            state.in_sync = in_sync;
            state.joining.clear();
            state.unanswered = None;
        }
        if self.is_leader() {
            self.recompute(own_end);
        }
        self.high_watermark.send_modify(|_| {});
        let _guard = self.moved.0.lock().unwrap_or_else(|e| e.into_inner());
        self.moved.1.notify_all();
    }
}

impl State {
    /// The metadata named the in-sync set: an unanswered change decided on
    /// another set is over (committed, or refused if asked again).
    fn settle_unanswered(&mut self) {
        if self
            .unanswered
            .as_ref()
            .is_some_and(|(_, from)| !same_set(&self.in_sync, from))
        {
            self.unanswered = None;
            self.joining.clear();
        }
    }
}

fn same_set(a: &[i32], b: &[i32]) -> bool {
    a.len() == b.len() && a.iter().all(|r| b.contains(r))
}

/// Every replica but `leader`, at offset 0, caught up now.
fn fresh_followers(replicas: &[i32], leader: i32) -> BTreeMap<i32, Follower> {
    let now = Instant::now();
    replicas
        .iter()
        .filter(|r| **r != leader)
        .map(|r| {
            (
                *r,
                Follower {
                    end: Offset::from(0),
                    caught_up: now,
                    fetched: false,
                },
            )
        })
        .collect()
}

impl Replication {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.node == self.leader()
    }

    pub(crate) fn leader(&self) -> i32 {
        self.leader.load(Ordering::Acquire)
    }

    pub(crate) fn replicas(&self) -> Vec<i32> {
        self.state().replicas.clone()
    }

    /// The replicas the metadata now names (the partition moves): new
    /// followers start at offset 0, caught up now (the leader adds them to
    /// the in-sync replicas once they reach the high watermark); gone ones
    /// are forgotten.
    pub(crate) fn set_replicas(&self, replicas: Vec<i32>, in_sync: Vec<i32>, own_end: Offset) {
        {
            let mut state = self.state();
            let leader = self.leader();
            let now = Instant::now();
            state.followers.retain(|r, _| replicas.contains(r));
            for replica in replicas.iter().filter(|r| **r != leader) {
                state.followers.entry(*replica).or_insert(Follower {
                    end: Offset::from(0),
                    caught_up: now,
                    fetched: false,
                });
            }
            state.replicas = replicas;
            state.in_sync = in_sync;
            state.settle_unanswered();
        }
        if self.is_leader() {
            self.recompute(own_end);
        }
    }

    pub(crate) fn in_sync_count(&self) -> usize {
        self.state().in_sync.len()
    }

    pub(crate) fn in_sync(&self) -> Vec<i32> {
        self.state().in_sync.clone()
    }

    pub(crate) fn set_in_sync(&self, in_sync: Vec<i32>, own_end: Offset) {
        let before = {
            let mut state = self.state();
            let before = std::mem::replace(&mut state.in_sync, in_sync.clone()).len();
            state.settle_unanswered();
            if state.unanswered.is_none() {
                state.joining.clear();
            }
            before
        };
        if self.is_leader() {
            match in_sync.len().cmp(&before) {
                std::cmp::Ordering::Less => self.shrinks.fetch_add(1, Ordering::Relaxed),
                std::cmp::Ordering::Greater => self.expands.fetch_add(1, Ordering::Relaxed),
                std::cmp::Ordering::Equal => 0,
            };
            self.recompute(own_end);
        }
    }

    /// The in-sync changes and, on the leader, the followers' lag.
    pub(crate) fn stats(&self, own_end: Offset) -> ReplicationStats {
        let mut stats = ReplicationStats {
            in_sync_shrinks: self.shrinks.load(Ordering::Relaxed),
            in_sync_expands: self.expands.load(Ordering::Relaxed),
            ..ReplicationStats::default()
        };
        if self.is_leader() {
            let now = Instant::now();
            for follower in self.state().followers.values() {
                let behind = own_end.get().saturating_sub(follower.end.get());
                stats.follower_lag_records = stats
                    .follower_lag_records
                    .max(u64::try_from(behind).unwrap_or(0));
                let since = now.duration_since(follower.caught_up).as_millis();
                stats.follower_lag_ms = stats
                    .follower_lag_ms
                    .max(u64::try_from(since).unwrap_or(u64::MAX));
            }
        }
        stats
    }

    pub(crate) fn high_watermark(&self) -> Offset {
        Offset::from(*self.high_watermark.borrow())
    }

    /// Whether the high watermark reached where this leader's epoch
    /// started (always true on a follower, which answers no client).
    pub(crate) fn caught_up_to_lead(&self) -> bool {
        !self.is_leader()
            || self.high_watermark().get() >= self.leader_start.load(Ordering::Acquire)
    }

    /// At start: the high watermark this node checkpointed, as far as its
    /// log reaches (Kafka reads its replication-offset-checkpoint), so a
    /// restarted leader serves what was committed before its followers
    /// fetch again.
    pub(crate) fn resume(&self, checkpointed: Offset, own_end: Offset, log_end: Offset) {
        self.advance(checkpointed.min(own_end));
        if self.is_leader() {
            self.leader_start.store(log_end.get(), Ordering::Release);
            // A leader alone in sync has its own end as high watermark.
            self.recompute(own_end);
        }
    }

    /// After a follower cut its log to `end`: a high watermark past it
    /// (only after an unclean election) comes back to it.
    pub(crate) fn truncated(&self, end: Offset) {
        self.high_watermark.send_if_modified(|hw| {
            if *hw > end.get() {
                *hw = end.get();
                true
            } else {
                false
            }
        });
    }

    /// Moves the high watermark forward to `to` (never back).
    fn advance(&self, to: Offset) {
        let moved = self.high_watermark.send_if_modified(|hw| {
            if to.get() > *hw {
                *hw = to.get();
                true
            } else {
                false
            }
        });
        if moved {
            let _guard = self.moved.0.lock().unwrap_or_else(|e| e.into_inner());
            self.moved.1.notify_all();
        }
    }

    /// On the leader: the high watermark from its own durable end and the
    /// ends of the in-sync followers and of those asked to join them.
    pub(crate) fn recompute(&self, own_end: Offset) {
        let state = self.state();
        let lowest = state
            .in_sync
            .iter()
            .chain(&state.joining)
            .filter(|r| **r != self.node)
            .map(|r| state.followers.get(r).map_or(Offset::from(0), |f| f.end))
            .fold(own_end, Offset::min);
        drop(state);
        self.advance(lowest);
    }

    /// On the leader: follower `replica` fetched from `offset` (so its log
    /// ends there) while the leader's log ends at `log_end`.
    pub(crate) fn fetched(&self, replica: i32, offset: Offset, log_end: Offset, own_end: Offset) {
        if offset > log_end {
            // A log longer than the leader's has records the leader never
            // had (a former leader back before it truncated): nothing of
            // it counts (Kafka answers OFFSET_OUT_OF_RANGE and leaves the
            // follower's state as it was). Counted, it would raise the
            // high watermark over records this leader does not have and
            // bring the follower into the in-sync replicas, even make it
            // the preferred leader again; the nemesis saw a returning
            // leader elected so and ~900 records of its divergent tail
            // dropped from under an idempotent producer.
            return;
        }
        {
            let mut state = self.state();
            let Some(follower) = state.followers.get_mut(&replica) else {
                return;
            };
            follower.end = offset;
            follower.fetched = true;
            if offset >= log_end {
                follower.caught_up = Instant::now();
            }
        }
        self.recompute(own_end);
    }

    /// On a follower: the leader's high watermark, capped by what this
    /// node has (durably, under `always`).
    pub(crate) fn follow(&self, leader_high_watermark: Offset, own_end: Offset) {
        self.advance(leader_high_watermark.min(own_end));
    }

    /// On the leader: in-sync followers that have not caught up for
    /// `max_lag`, and out-of-sync ones that have reached the high
    /// watermark. The in-sync set the leader should propose, if it differs,
    /// with the set it differs from; the followers it adds count toward
    /// the high watermark from now until the metadata changes the set (or
    /// the next call, after a refusal). An unanswered change is returned
    /// again as it was.
    pub(crate) fn wanted_in_sync(&self, max_lag: Duration) -> Option<(Vec<i32>, Vec<i32>)> {
        if !self.is_leader() {
            return None;
        }
        let hw = self.high_watermark();
        let mut state = self.state();
        if let Some(unanswered) = &state.unanswered {
            return Some(unanswered.clone());
        }
        let now = Instant::now();
        let wanted: Vec<i32> = state
            .replicas
            .iter()
            .copied()
            .filter(|r| {
                if *r == self.node {
                    return true;
                }
                let Some(follower) = state.followers.get(r) else {
                    return false;
                };
                if state.in_sync.contains(r) {
                    now.duration_since(follower.caught_up) <= max_lag
                } else {
                    follower.fetched
                        && follower.end >= hw
                        && now.duration_since(follower.caught_up) <= max_lag
                }
            })
            .collect();
        let mut current = state.in_sync.clone();
        current.sort_unstable();
        let mut sorted = wanted.clone();
        sorted.sort_unstable();
        let changed = sorted != current;
        state.joining = if changed {
            wanted
                .iter()
                .copied()
                .filter(|r| !state.in_sync.contains(r))
                .collect()
        } else {
            Vec::new()
        };
        changed.then(|| (wanted, state.in_sync.clone()))
    }

    /// On the leader: the in-sync change `wanted`, decided on `from`, was
    /// asked for and no answer came; unless the metadata's set already
    /// moved off `from`, it is asked again by every next check (see
    /// `State::unanswered`).
    pub(crate) fn unanswered(&self, wanted: Vec<i32>, from: Vec<i32>) {
        let mut state = self.state();
        if self.is_leader() && same_set(&state.in_sync, &from) {
            for replica in wanted.iter().filter(|r| !from.contains(r)) {
                if !state.joining.contains(replica) {
                    state.joining.push(*replica);
                }
            }
            state.unanswered = Some((wanted, from));
        }
    }

    /// Waits until the high watermark reaches `end` while this node leads.
    pub(crate) async fn reached(&self, end: Offset, timeout: Duration) -> Reached {
        let mut moved = self.high_watermark.subscribe();
        // The watch's read guard is dropped inside the timeout: reading the
        // watch again while holding it deadlocks against a waiting writer.
        let waited = tokio::time::timeout(timeout, async {
            moved
                .wait_for(|hw| *hw >= end.get() || !self.is_leader())
                .await
                .map(|hw| *hw)
        })
        .await;
        match waited {
            Ok(Ok(hw)) if hw >= end.get() => Reached::Yes,
            Ok(_) if self.high_watermark() >= end => Reached::Yes,
            Ok(_) => Reached::NoLongerLeader(self.leader()),
            Err(_) => Reached::TimedOut,
        }
    }

    /// As [`Replication::reached`], blocking.
    pub(crate) fn reached_blocking(&self, end: Offset, timeout: Duration) -> Reached {
        let deadline = Instant::now() + timeout;
        let mut guard = self.moved.0.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.high_watermark() >= end {
                return Reached::Yes;
            }
            if !self.is_leader() {
                return Reached::NoLongerLeader(self.leader());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Reached::TimedOut;
            }
            guard = self
                .moved
                .1
                .wait_timeout(guard, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many acks=all waiters while the high watermark moves from other
    /// threads: every waiter is answered (reading the watch while holding
    /// its guard once froze the runtime here).
    #[test]
    fn waiters_are_answered_while_the_high_watermark_moves() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let replication = std::sync::Arc::new(Replication::new(
            1,
            vec![1, 2],
            1,
            vec![1, 2],
            Offset::from(0),
        ));
        let mover = {
            let replication = std::sync::Arc::clone(&replication);
            std::thread::spawn(move || {
                for end in 1..=20_000_i64 {
                    replication.fetched(2, Offset::from(end), Offset::from(end), Offset::from(end));
                }
            })
        };
        let answered = runtime.block_on(async {
            let waiters: Vec<_> = (1..=400_i64)
                .map(|i| {
                    let replication = std::sync::Arc::clone(&replication);
                    tokio::spawn(async move {
                        replication
                            .reached(Offset::from(i * 50), Duration::from_secs(20))
                            .await
                    })
                })
                .collect();
            let mut answered = Vec::new();
            for waiter in waiters {
                answered.push(waiter.await.expect("waiter"));
            }
            answered
        });
        mover.join().expect("mover");
        assert!(answered.iter().all(|r| *r == Reached::Yes), "{answered:?}");
        assert_eq!(replication.high_watermark(), Offset::from(20_000));
        // A former leader's waiters learn it at once.
        replication.change_leader(2, vec![2], Offset::from(20_000), Offset::from(20_000));
        let late =
            runtime.block_on(replication.reached(Offset::from(30_000), Duration::from_secs(20)));
        assert_eq!(late, Reached::NoLongerLeader(2));
    }
    /// A new leader whose high watermark lags the log end it took the
    /// lead with answers no offsets until its followers caught up there:
    /// a client would otherwise see the end go back from what the former
    /// leader acknowledged.
    #[test]
    fn a_new_leader_answers_offsets_once_its_high_watermark_reaches_its_start() {
        let replication = Replication::new(1, vec![1, 2, 3], 2, vec![1, 2, 3], Offset::from(2));
        assert!(replication.caught_up_to_lead(), "a follower never waits");
        replication.change_leader(1, vec![1, 2, 3], Offset::from(3), Offset::from(3));
        assert_eq!(replication.high_watermark(), Offset::from(2));
        assert!(!replication.caught_up_to_lead());
        replication.fetched(2, Offset::from(3), Offset::from(3), Offset::from(3));
        assert!(!replication.caught_up_to_lead(), "node 3 is in sync too");
        replication.fetched(3, Offset::from(3), Offset::from(3), Offset::from(3));
        assert_eq!(replication.high_watermark(), Offset::from(3));
        assert!(replication.caught_up_to_lead());
    }
    /// A follower whose log goes past the leader's (a former leader back
    /// before it truncated) is not counted: the high watermark stays, and
    /// it does not rejoin the in-sync replicas.
    #[test]
    fn a_fetch_past_the_leaders_end_counts_for_nothing() {
        let replication = Replication::new(1, vec![1, 2, 3], 1, vec![1, 3], Offset::from(0));
        replication.fetched(3, Offset::from(100), Offset::from(100), Offset::from(100));
        assert_eq!(replication.high_watermark(), Offset::from(100));
        replication.fetched(2, Offset::from(150), Offset::from(100), Offset::from(100));
        assert_eq!(replication.high_watermark(), Offset::from(100));
        assert_eq!(
            replication
                .wanted_in_sync(Duration::from_secs(30))
                .map(|(wanted, _)| wanted),
            None
        );
        // Once truncated and caught up, it is back.
        replication.fetched(2, Offset::from(100), Offset::from(100), Offset::from(100));
        assert_eq!(
            replication
                .wanted_in_sync(Duration::from_secs(30))
                .map(|(wanted, _)| wanted),
            Some(vec![1, 2, 3])
        );
    }
    /// A follower joins the in-sync replicas by fetching, never by a new
    /// leader's fresh bookkeeping: a dead node's nothing "reaches" an empty
    /// partition's high watermark of 0 (the in-sync set then flapped
    /// between the leader's proposals and the controller's removals).
    #[test]
    fn a_follower_that_never_fetched_does_not_join_the_in_sync_replicas() {
        let replication = Replication::new(1, vec![1, 2, 3], 1, vec![1, 2], Offset::from(0));
        assert_eq!(
            replication
                .wanted_in_sync(Duration::from_secs(30))
                .map(|(wanted, _)| wanted),
            None
        );
        replication.fetched(3, Offset::from(0), Offset::from(0), Offset::from(0));
        assert_eq!(
            replication
                .wanted_in_sync(Duration::from_secs(30))
                .map(|(wanted, _)| wanted),
            Some(vec![1, 2, 3])
        );
    }

    /// A follower the leader asks to add counts toward the high watermark
    /// from the ask (the controller may elect it as soon as the change
    /// commits): what the leader writes meanwhile is not acknowledged
    /// until the joining follower has it too. Once the metadata answers,
    /// the committed set alone counts; a refused ask ends at the next.
    #[test]
    fn a_follower_asked_to_join_holds_the_high_watermark_until_it_has_the_records() {
        let replication = Replication::new(1, vec![1, 2, 3], 1, vec![1, 3], Offset::from(0));
        replication.fetched(3, Offset::from(100), Offset::from(100), Offset::from(100));
        replication.fetched(2, Offset::from(100), Offset::from(100), Offset::from(100));
        assert_eq!(replication.high_watermark(), Offset::from(100));
        assert_eq!(
            replication
                .wanted_in_sync(Duration::from_secs(30))
                .map(|(wanted, _)| wanted),
            Some(vec![1, 2, 3])
        );
        // Written after the ask, fetched by 3 only: not acknowledged.
        replication.fetched(3, Offset::from(120), Offset::from(120), Offset::from(120));
        assert_eq!(replication.high_watermark(), Offset::from(100));
        replication.fetched(2, Offset::from(120), Offset::from(120), Offset::from(120));
        assert_eq!(replication.high_watermark(), Offset::from(120));
        // Committed: the new set counts.
        replication.set_in_sync(vec![1, 2, 3], Offset::from(120));
        replication.fetched(3, Offset::from(130), Offset::from(130), Offset::from(130));
        assert_eq!(replication.high_watermark(), Offset::from(120));

        // Refused, and the follower no longer caught up by the next
        // check (nothing to change then): it stops counting.
        let refused = Replication::new(1, vec![1, 2, 3], 1, vec![1, 3], Offset::from(0));
        refused.fetched(3, Offset::from(100), Offset::from(100), Offset::from(100));
        refused.fetched(2, Offset::from(100), Offset::from(100), Offset::from(100));
        assert!(
            refused
                .wanted_in_sync(Duration::from_secs(30))
                .map(|(wanted, _)| wanted)
                .is_some()
        );
        std::thread::sleep(Duration::from_millis(50));
        refused.fetched(3, Offset::from(150), Offset::from(150), Offset::from(150));
        assert_eq!(refused.high_watermark(), Offset::from(100));
        assert_eq!(
            refused
                .wanted_in_sync(Duration::from_millis(25))
                .map(|(wanted, _)| wanted),
            None
        );
        refused.fetched(3, Offset::from(150), Offset::from(150), Offset::from(150));
        assert_eq!(refused.high_watermark(), Offset::from(150));
    }

    /// An ask whose answer never came may still commit: it is asked again
    /// as it was, and the follower it adds keeps holding the high
    /// watermark even after it falls behind, until the metadata's set
    /// moves off the one the ask was decided on.
    #[test]
    fn an_unanswered_ask_is_asked_again_and_counts_until_the_metadata_settles_it() {
        let replication = Replication::new(1, vec![1, 2, 3], 1, vec![1, 3], Offset::from(0));
        replication.fetched(3, Offset::from(100), Offset::from(100), Offset::from(100));
        replication.fetched(2, Offset::from(100), Offset::from(100), Offset::from(100));
        let asked = replication.wanted_in_sync(Duration::from_secs(30));
        assert_eq!(asked, Some((vec![1, 2, 3], vec![1, 3])));
        replication.unanswered(vec![1, 2, 3], vec![1, 3]);
        // 2 stops fetching: without the ask pending, the next check would
        // drop it and let 3 alone move the high watermark.
        std::thread::sleep(Duration::from_millis(300));
        replication.fetched(3, Offset::from(150), Offset::from(150), Offset::from(150));
        assert_eq!(
            replication.wanted_in_sync(Duration::from_millis(200)),
            asked,
            "asked again as it was"
        );
        assert_eq!(replication.high_watermark(), Offset::from(100));
        // The metadata names another set than the one decided on (here the
        // ask committed late): settled; the committed set alone counts.
        replication.set_in_sync(vec![1, 3], Offset::from(150));
        assert_eq!(replication.high_watermark(), Offset::from(100));
        replication.set_in_sync(vec![1, 2, 3], Offset::from(150));
        replication.set_in_sync(vec![1, 3], Offset::from(150));
        assert_eq!(replication.high_watermark(), Offset::from(150));
        assert_eq!(replication.wanted_in_sync(Duration::from_millis(200)), None);

        // A new leader settles it too.
        let moved = Replication::new(1, vec![1, 2, 3], 1, vec![1, 3], Offset::from(0));
        moved.fetched(2, Offset::from(10), Offset::from(10), Offset::from(10));
        moved.fetched(3, Offset::from(10), Offset::from(10), Offset::from(10));
        assert!(moved.wanted_in_sync(Duration::from_secs(30)).is_some());
        moved.unanswered(vec![1, 2, 3], vec![1, 3]);
        moved.change_leader(1, vec![1, 3], Offset::from(10), Offset::from(10));
        std::thread::sleep(Duration::from_millis(300));
        moved.fetched(3, Offset::from(20), Offset::from(20), Offset::from(20));
        assert_eq!(moved.wanted_in_sync(Duration::from_millis(200)), None);
        assert_eq!(moved.high_watermark(), Offset::from(20));
    }
}
