//! One home for a node's background work and the tasks that hold the
//! broker: started by [`Broker::run`], stopped by [`Lifecycle::shutdown`].
//!
//! The jobs, each on its own interval:
//! - consumer group members that stopped heartbeating leave (250 ms);
//! - committed offsets of long-empty groups expire (60 s);
//! - queues write settlements, expire messages and themselves, and the
//!   disk's free space is checked, raising or clearing the disk alarm
//!   that Kafka produce and AMQP publishers obey (100 ms);
//! - the high watermark checkpoint is written (5 s, Kafka's
//!   `replica.high.watermark.checkpoint.interval.ms`);
//! - forwarders publish topic records to AMQP exchanges
//!   ([`crate::forwarding::run`]).
//!
//! - the logs' maintenance pass: `interval` syncs, retention, compaction
//!   and idle file handles (`LogManager::maintain`, every 50 ms by
//!   default; the log manager runs no thread of its own in a broker).
//!
//! Connections are spawned through [`Tasks`], so that
//! shutdown waits for them, bounded, instead of counting references.
//!
//! Shutdown is one signal: the front-ends' listeners run through
//! [`Lifecycle::serve`] and watch [`Lifecycle::stopping`]; one call to
//! [`Lifecycle::shutdown`] raises it, waits for the listeners and then the
//! connections, and only then stops the jobs (queue maintenance keeps
//! writing while connections finish).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::{AbortHandle, JoinHandle};

use crate::Broker;

/// How often a node retries handing the configuration's users to the
/// metadata, until it took them.
const USERS_BOOTSTRAP_EVERY: Duration = Duration::from_millis(500);
/// How often members' sessions are checked.
const MEMBER_EXPIRY_EVERY: Duration = Duration::from_millis(250);
/// How often committed offsets are checked for expiry.
const OFFSETS_EXPIRY_EVERY: Duration = Duration::from_secs(60);
/// How often share-partition states changed by lock expiries are stored
/// (fetches and acknowledgements store theirs before answering).
const SHARE_STATE_EVERY: Duration = Duration::from_millis(500);
/// How often queues are maintained and the disk checked.
const MAINTENANCE_EVERY: Duration = Duration::from_millis(100);
/// How often timed-out transactions are aborted and decided ones
/// completed.
const TRANSACTIONS_EVERY: Duration = Duration::from_secs(1);
/// How often the high watermark checkpoint is written.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// Tasks that hold the broker until they end (client connections):
/// spawned here, waited for at shutdown, aborted after a grace period.
#[derive(Debug, Default)]
pub struct Tasks {
    next: AtomicU64,
    live: Mutex<HashMap<u64, AbortHandle>>,
    idle: Notify,
}

impl Tasks {
    fn live(&self) -> MutexGuard<'_, HashMap<u64, AbortHandle>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `task` on the runtime, tracked until it ends.
    pub fn spawn<F>(self: &Arc<Self>, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let tasks = Arc::clone(self);
        // Registered under the lock it removes itself under: a task that
        // ends at once still finds its entry.
        let mut live = self.live();
        let handle = tokio::spawn(async move {
            task.await;
            tasks.finished(id);
        });
        live.insert(id, handle.abort_handle());
    }

    fn finished(&self, id: u64) {
        let mut live = self.live();
        live.remove(&id);
        if live.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// How many tasks are running.
    pub fn count(&self) -> usize {
        self.live().len()
    }

    /// Waits until every task has ended, at most `grace`; then aborts the
    /// rest and returns how many that was.
    pub async fn wait(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.live().is_empty() {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                let left: Vec<AbortHandle> = self.live().drain().map(|(_, h)| h).collect();
                left.iter().for_each(AbortHandle::abort);
                return left.len();
            }
        }
    }
}

/// The running background work of a broker.
#[derive(Debug)]
pub struct Lifecycle {
    broker: Arc<Broker>,
    /// The shutdown signal the listeners and their connections watch.
    stopping: watch::Sender<bool>,
    /// The jobs' stop, sent by `shutdown` once connections are gone.
    stop: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    jobs: Vec<JoinHandle<()>>,
}

impl Broker {
    /// Starts the broker's background work on the current tokio runtime.
    pub fn run(self: &Arc<Self>) -> Lifecycle {
        // Consumer groups load their stored membership from the offsets
        // of the groups this node coordinates.
        let weak = Arc::downgrade(self);
        self.consumer_groups()
            .attach_loader(Box::new(move |group, text| {
                let broker = weak.upgrade()?;
                let topic = text.then_some(crate::consumer_groups::MEMBERSHIP_TOPIC);
                let (epoch, entry) = broker.offsets().coordinated_entry(group, topic)?;
                Some((epoch, entry.and_then(|committed| committed.metadata)))
            }));
        let (stop, stopped) = watch::channel(false);
        let jobs = vec![
            every(
                self,
                USERS_BOOTSTRAP_EVERY,
                stopped.clone(),
                Runs::Blocking,
                |broker| {
                    // Until the metadata takes the configuration's users
                    // (a cluster's quorum may not be ready at first).
                    if !broker.users().bootstrapped()
                        && let Err(error) = broker.bootstrap_users()
                    {
                        tracing::debug!(%error, "the configuration's users wait for the metadata");
                    }
                    // Once the users are in, in the same pass.
                    if broker.users().bootstrapped()
                        && !broker.permissions().bootstrapped()
                        && let Err(error) = broker.bootstrap_permissions()
                    {
                        tracing::debug!(%error, "the users' permissions wait for the metadata");
                    }
                },
            ),
            every(
                self,
                MEMBER_EXPIRY_EVERY,
                stopped.clone(),
                Runs::InPlace,
                |broker| {
                    broker.groups().expire_members();
                    broker.consumer_groups().expire(tokio::time::Instant::now());
                    broker.downgrade_consumer_groups();
                    broker.share_groups().expire(tokio::time::Instant::now());
                },
            ),
            every(
                self,
                SHARE_STATE_EVERY,
                stopped.clone(),
                Runs::Blocking,
                |broker| broker.store_share_state(),
            ),
            every(
                self,
                SHARE_STATE_EVERY,
                stopped.clone(),
                Runs::Blocking,
                |broker| {
                    // Groups this node stopped coordinating go; what
                    // changed without a request (fenced members, a
                    // downgrade) is stored.
                    broker.consumer_groups().retain(|group| {
                        broker.offsets().coordinator(group) == crate::Coordinator::Here
                    });
                    // Failures are logged; the next tick tries again.
                    let _ = broker.store_consumer_groups(None);
                },
            ),
            every(
                self,
                OFFSETS_EXPIRY_EVERY,
                stopped.clone(),
                Runs::Blocking,
                expire_offsets,
            ),
            every(
                self,
                MAINTENANCE_EVERY,
                stopped.clone(),
                Runs::Blocking,
                |broker| {
                    broker.vhosts().maintain();
                    broker.check_disk();
                },
            ),
            every(
                self,
                TRANSACTIONS_EVERY,
                stopped.clone(),
                Runs::Blocking,
                |broker| broker.transactions().tick(broker),
            ),
            every(
                self,
                CHECKPOINT_EVERY,
                stopped.clone(),
                Runs::Blocking,
                |broker| {
                    if let Err(error) = broker.checkpoint_high_watermarks() {
                        tracing::warn!(%error, "cannot write the high watermark checkpoint");
                    }
                },
            ),
            every(
                self,
                self.logs().maintenance_settings().tick,
                stopped.clone(),
                Runs::Blocking,
                |broker| broker.logs().maintain(),
            ),
            tokio::spawn(follow_definitions(Arc::clone(self), stopped.clone())),
            tokio::spawn(crate::forwarding::run(Arc::clone(self), stopped)),
        ];
        Lifecycle {
            broker: Arc::clone(self),
            stopping: watch::channel(false).0,
            stop,
            listeners: Vec::new(),
            jobs,
        }
    }
}

impl Lifecycle {
    /// The shutdown signal: `true` once [`Lifecycle::shutdown`] starts.
    /// Listeners stop accepting on it and connections end at their next
    /// request boundary.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Runs a front-end's listener loop, which must end soon after
    /// [`Lifecycle::stopping`] turns `true`; shutdown waits for it.
    pub fn serve<F>(&mut self, listener: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.listeners.push(tokio::spawn(listener));
    }

    /// Raises the shutdown signal and waits for the listeners to stop; waits,
    /// at most `grace`, for the tracked tasks (connections) to end,
    /// aborting the rest; then stops the background jobs, each finishing
    /// the step it is in. Returns how many tasks had to be aborted. The
    /// logs are still open: call [`Broker::shutdown`] next.
    pub async fn shutdown(self, grace: Duration) -> usize {
        let _ = self.stopping.send(true);
        for listener in self.listeners {
            let _ = listener.await;
        }
        let aborted = self.broker.tasks().wait(grace).await;
        let _ = self.stop.send(true);
        for job in self.jobs {
            let _ = job.await;
        }
        aborted
    }
}

/// Where a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runs {
    /// On the runtime: the job never blocks.
    InPlace,
    /// On the blocking pool (disk work), one run at a time.
    Blocking,
}

/// Runs `job` every `period` until `stopped`.
fn every(
    broker: &Arc<Broker>,
    period: Duration,
    mut stopped: watch::Receiver<bool>,
    runs: Runs,
    job: fn(&Broker),
) -> JoinHandle<()> {
    let broker = Arc::clone(broker);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => match runs {
                    Runs::InPlace => job(&broker),
                    Runs::Blocking => {
                        let broker = Arc::clone(&broker);
                        let _ = tokio::task::spawn_blocking(move || job(&broker)).await;
                    }
                },
                _ = stopped.changed() => return,
            }
        }
    })
}

/// How often a node of a cluster checks where its quorum queues' partitions
/// lead (a new leader runs the queue within this of the change).
const QUORUM_LEADERS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// On a node of a cluster: applies the AMQP definitions other nodes
/// commit to this node's virtual hosts, as they are applied here.
async fn follow_definitions(broker: Arc<Broker>, mut stopped: watch::Receiver<bool>) {
    let metadata = Arc::clone(broker.topics().metadata());
    if !metadata.clustered() {
        return;
    }
    let mut changes = metadata.watch_definitions();
    let mut changed = true;
    loop {
        // Whatever changed between open and the first wait counts too.
        let current = changed.then(|| metadata.definitions());
        let reconciling = Arc::clone(&broker);
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(current) = current {
                reconciling.vhosts().reconcile(current);
            }
            // Quorum queues run where their partitions lead.
            for vhost in reconciling.vhosts().all() {
                vhost.follow_quorum_leaders();
            }
        })
        .await;
        tokio::select! {
            result = changes.changed() => {
                if result.is_err() {
                    return;
                }
                changed = true;
            }
            () = tokio::time::sleep(QUORUM_LEADERS_EVERY) => changed = false,
            _ = stopped.changed() => return,
        }
    }
}

/// Forgets the committed offsets of groups empty for the retention time;
/// forwarders' positions (kept as groups without members) never expire.
fn expire_offsets(broker: &Broker) {
    let expired = broker
        .offsets()
        .expire(broker.offsets_retention(), |group| {
            group.starts_with(crate::forwarding::FORWARD_GROUP_PREFIX)
                || group.starts_with(crate::share_store::SHARE_STATE_PREFIX)
                || broker
                    .groups()
                    .describe(group)
                    .is_some_and(|g| !g.members.is_empty())
                || broker.consumer_groups().exists(group) == Some(true)
        });
    if let Err(error) = expired {
        tracing::warn!(%error, "expiring committed offsets failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_tasks_and_aborts_those_past_the_grace() {
        let tasks = Arc::new(Tasks::default());
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(async move {
            let _ = finished.await;
        });
        tasks.spawn(std::future::pending());
        assert_eq!(tasks.count(), 2);
        let waiting = {
            let tasks = Arc::clone(&tasks);
            tokio::spawn(async move { tasks.wait(Duration::from_millis(300)).await })
        };
        let _ = finish.send(());
        let aborted = waiting.await.expect("wait");
        assert_eq!(aborted, 1, "the pending task was aborted after the grace");
        assert_eq!(tasks.count(), 0);

        tasks.spawn(async {});
        assert_eq!(tasks.wait(Duration::from_secs(5)).await, 0);
    }
}
