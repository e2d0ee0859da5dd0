//! The protocol-agnostic broker core.
//!
//! It owns what both protocols share: the data directory, the logs behind
//! Kafka partitions and durable AMQP queues, and (in later issues) topics,
//! queues, exchanges, bindings, groups and offsets. It never sees a socket;
//! front-ends translate wire types at their edge and call in here.
//!
//! ```text
//!   sluice (binary) ──open/shutdown──▶ Broker ──▶ LogManager (sluice-log)
//!                                        │            │
//!                                   DataDirLock   logs/<name>/<segments>
//! ```
//!
//! Start reading at [`Broker::open`].

mod ack;
pub mod acls;
mod admission;
mod connections;
pub mod consumer_groups;
mod coordinated;
mod data_dir;
mod error;
mod fields;
pub mod forwarding;
mod group_config;
mod groups;
mod hw_checkpoint;
mod lifecycle;
pub mod limits;
pub mod messaging;
mod metadata;
mod metrics;
mod offsets;
mod partition;
pub mod permissions;
mod producers;
pub mod quotas;
mod recovery;
mod replay;
pub mod replication;
pub mod retained;
pub mod share_groups;
mod share_store;
mod topic_config;
mod topics;
pub mod transactions;
mod users;

/// The storage engine's types that reach past core: its errors (in
/// [`CoreError::Log`]), the settings a broker starts with, and its
/// process-wide metrics.
pub mod storage {
    pub use sluice_log::{
        BatchFault, Durability, LogConfig, LogError, MaintenanceSettings, StorageMetrics, metrics,
    };
}

/// Building record batches (Kafka's RecordBatch v2): what the admin API
/// produces and tests feed in; reading a batch's header.
pub mod records {
    pub use sluice_log::batch::{
        BatchHeader, NewRecord, RecordHeader, encode, encode_with_headers, headers,
    };
}

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_log::{LogConfig, LogManager};
use sluice_types::{Clock, SystemClock};

pub use ack::{AckLevel, Acks, OrderedAcks, PendingAck, RemoteOutcome};
pub use admission::{Admission, Alarm, Verdict, Writer};
pub use connections::{
    AmqpCounts, ChannelStats, Claim, ConnectionDetails, ConnectionHandle, ConnectionLimits,
    ConnectionRefused, ConnectionStats, Connections, Protocol, SessionTakeover, Takeover,
};
pub use data_dir::DataDirLock;
pub use error::CoreError;
pub use group_config::{DeadLetterTarget, GroupConfig, GroupConfigs};
pub use groups::{
    GroupCoordinator, GroupDescription, GroupError, GroupSettings, GroupState, JoinRequest,
    JoinResponse, JoinedMember, MemberDescription, SyncResponse, UpgradingMember,
};
pub use lifecycle::{Lifecycle, Tasks};
use messaging::VirtualHosts;
pub use metadata::Election;
pub use metadata::{BrokerAddress, Metadata, MetadataCommand, MetadataMachine, MetadataQuorum};
pub use metrics::{ProtocolMetrics, RequestMetrics};
pub use offsets::{CommittedOffset, Coordinator, OFFSETS_LOG, OFFSETS_TOPIC, OffsetStore};
pub use partition::{
    Chunk, Fetched, Following, Partition, PartitionTraffic, Position, Undecodable,
};
pub use producers::ProducerIds;
pub use replication::ReplicationStats;
pub use share_store::{SHARE_FORGET_PREFIX, SHARE_STATE_PREFIX, ShareAdminError};
pub use topic_config::{
    CleanupPolicy, ConfigEntry, ConfigSource, ConfigType, FORWARD_EXCHANGE, FORWARD_ROUTING_KEY,
    FORWARD_START, FORWARD_VHOST, Forwarding, SHARE_DEAD_LETTER_EXCHANGE, SHARE_DEAD_LETTER_VHOST,
    STORED_ONLY_KEYS, TOPIC_CONFIG_KEYS, TimestampType, TopicConfig,
};
pub use topics::{
    Appended, MAX_PARTITIONS, MAX_TOPIC_NAME, Reassigning, Topic, Topics, is_internal, log_name,
};
pub use users::{
    DEFAULT_ITERATIONS, MAX_ITERATIONS, MIN_ITERATIONS, Principal, ScramCredential, ScramMechanism,
    UserRecord, Users, valid_user_name,
};

/// The leader epoch of the node-local internal logs (committed offsets,
/// AMQP definitions, queue messages): they are never replicated.
pub(crate) const LOCAL_EPOCH: sluice_types::LeaderEpoch = sluice_types::LeaderEpoch::new(0);

/// Wall-clock milliseconds.
pub fn now_ms() -> i64 {
    SystemClock.now_ms()
}

/// Every partition's high watermark, for the checkpoint.
fn high_watermarks(topics: &Topics) -> Vec<hw_checkpoint::Entry> {
    topics
        .names()
        .iter()
        .filter_map(|name| topics.get(name))
        .flat_map(|topic| topic.partitions())
        .map(|partition| hw_checkpoint::Entry {
            topic: partition.topic().to_owned(),
            partition: partition.id().get(),
            high_watermark: partition.high_watermark().get(),
        })
        .collect()
}

/// Reads the high watermark checkpoint: replicated partitions resume from
/// it (as far as their logs reach), and a partition whose log ends below
/// it is reported (the log lost data the broker had made visible). A
/// partition of one node derives its high watermark from its log.
fn check_high_watermarks(data_dir: &Path, topics: &Topics) {
    let entries = match hw_checkpoint::read(data_dir) {
        Ok(Some(entries)) => entries,
        Ok(None) => return,
        Err(reason) => {
            tracing::warn!(file = %hw_checkpoint::path(data_dir).display(), %reason, "ignoring a damaged high watermark checkpoint");
            return;
        }
    };
    for entry in entries {
        let Some(partition) = topics
            .get(&entry.topic)
            .and_then(|t| t.partition(sluice_types::PartitionId::from(entry.partition)))
        else {
            continue;
        };
        partition.resume_high_watermark(sluice_types::Offset::from(entry.high_watermark));
        let log_end = partition.log_end().get();
        if entry.high_watermark > log_end {
            tracing::warn!(
                topic = entry.topic,
                partition = entry.partition,
                checkpoint = entry.high_watermark,
                log_end,
                "the log ends below its checkpointed high watermark: records consumers saw are gone"
            );
        }
    }
}

/// What a broker needs to start.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Directory holding everything the broker stores.
    pub data_dir: PathBuf,
    /// This node's id (`node.id`): the Kafka broker id.
    pub node_id: i32,
    /// The wall clock (tests hand in a `sluice_types::ManualClock`).
    pub clock: Arc<dyn Clock>,
    /// Settings every log starts from.
    pub log: LogConfig,
    /// Whether a produce or metadata request for an unknown topic creates it.
    pub auto_create_topics: bool,
    /// Partition count of auto-created topics.
    pub default_partitions: u32,
    /// Replicas of each partition of a topic created without a replication
    /// factor, on a cluster (Kafka's `default.replication.factor`).
    pub default_replication: u16,
    /// AMQP virtual hosts.
    pub vhosts: Vec<String>,
    /// Message bytes queues may hold in memory before publishers are blocked.
    pub memory_high_watermark: u64,
    /// Ready message bytes each durable queue keeps in memory; newer
    /// persistent messages wait on disk until consumers reach them.
    pub queue_memory_bytes: u64,
    /// Segment size of the compacted log of committed offsets.
    pub offsets_segment_bytes: u64,
    /// Partitions of the committed offsets topic on a cluster (Kafka's
    /// `offsets.topic.num.partitions`).
    pub offsets_partitions: u32,
    /// Partitions of the transactions' states topic on a cluster (Kafka's
    /// `transaction.state.log.num.partitions`); its replicas are the
    /// offsets topic's.
    pub transaction_state_partitions: u32,
    /// Replicas of each committed offsets partition on a cluster (Kafka's
    /// `offsets.topic.replication.factor`; the binary takes 3, or the
    /// number of voters when fewer).
    pub offsets_replication: u16,
    /// Committed offsets of a group empty this long are forgotten (Kafka's
    /// `offsets.retention.minutes`).
    pub offsets_retention: std::time::Duration,
    /// The longest transaction timeout a producer may ask for (Kafka's
    /// `transaction.max.timeout.ms`).
    pub transaction_max_timeout_ms: i32,
    /// A transactional id with no transaction open and no change for this
    /// long is forgotten (Kafka's `transactional.id.expiration.ms`).
    pub transactional_id_expiration_ms: i64,
    /// Consumer group coordinator settings (session timeout range, initial
    /// rebalance delay).
    pub groups: GroupSettings,
    /// Consumer groups of the new protocol (KIP-848): session and
    /// heartbeat intervals, size cap, assignors.
    pub consumer_groups: consumer_groups::ConsumerGroupSettings,
    /// Share groups (KIP-932): lock duration, delivery limit, records in
    /// flight, where a share partition starts.
    pub share_groups: share_groups::ShareSettings,
    /// Free disk space under which publishers are blocked.
    pub disk_free_limit: u64,
    /// Caps on connections, topics and queues.
    pub limits: Limits,
    /// How often the logs' background jobs (interval flushes, retention,
    /// compaction, idle handles) run; the lifecycle runs them
    /// (`own_thread` is ignored).
    pub maintenance: sluice_log::MaintenanceSettings,
    /// How often a long recovery at start logs its progress.
    pub recovery_progress_interval: std::time::Duration,
    /// On a node of a cluster, the metadata its quorum applies to
    /// ([`Metadata::for_quorum`]); `None` for a cluster of one, which
    /// keeps its metadata in its own log.
    pub quorum_metadata: Option<Arc<Metadata>>,
    /// The configuration's users: they answer logins until the metadata
    /// takes them, which it does once, on a data directory's first start.
    pub users: std::collections::BTreeMap<String, UserRecord>,
}

impl BrokerOptions {
    /// A single node on `data_dir` with the configuration's defaults, except
    /// that nothing is capped, the disk is never low and a new group's
    /// first join completes without the initial rebalance delay (for tests,
    /// tools and fuzzing; the binary fills every field from its configuration).
    pub fn new(data_dir: impl Into<PathBuf>) -> BrokerOptions {
        BrokerOptions {
            data_dir: data_dir.into(),
            node_id: 1,
            clock: Arc::new(SystemClock),
            log: LogConfig::default(),
            auto_create_topics: true,
            default_partitions: 1,
            default_replication: 1,
            vhosts: vec!["/".to_owned()],
            memory_high_watermark: 1 << 30,
            queue_memory_bytes: messaging::DEFAULT_QUEUE_BUDGET,
            offsets_segment_bytes: 100 << 20,
            offsets_partitions: 50,
            transaction_state_partitions: 50,
            offsets_replication: 3,
            offsets_retention: std::time::Duration::from_secs(7 * 24 * 3600),
            transaction_max_timeout_ms: 900_000,
            transactional_id_expiration_ms: 7 * 24 * 3600 * 1000,
            groups: GroupSettings {
                initial_rebalance_delay: std::time::Duration::ZERO,
                ..GroupSettings::default()
            },
            consumer_groups: consumer_groups::ConsumerGroupSettings::default(),
            share_groups: share_groups::ShareSettings::default(),
            disk_free_limit: 0,
            limits: Limits::default(),
            maintenance: sluice_log::MaintenanceSettings::default(),
            recovery_progress_interval: std::time::Duration::from_secs(5),
            quorum_metadata: None,
            users: [(
                "guest".to_owned(),
                UserRecord::with_password("guest", vec!["administrator".to_owned()], true),
            )]
            .into_iter()
            .collect(),
        }
    }
}

/// [`CoreError::InvalidConfig`] unless `name` may name a user.
fn check_user_name(name: &str) -> Result<(), CoreError> {
    if valid_user_name(name) {
        return Ok(());
    }
    Err(CoreError::InvalidConfig {
        key: "name".to_owned(),
        reason: format!(
            "{name:?} is not a user name (1 to 255 bytes, no ':' and no control characters)"
        ),
    })
}

/// Caps on what clients may open; `None` is no cap (the default, for
/// tests; the binary takes its caps from the `[limits]` config section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections, in total and per IP address.
    pub connections: ConnectionLimits,
    /// Topics.
    pub max_topics: Option<u32>,
    /// Queues in one virtual host.
    pub max_queues: Option<u32>,
}

/// The cluster as one node sees it ([`Broker::cluster_view`]).
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Whether this node is part of a cluster (false: a cluster of one).
    pub clustered: bool,
    pub node_id: i32,
    /// The controller's id; -1 while there is none.
    pub controller: i32,
    /// The registered nodes and their Kafka addresses.
    pub nodes: Vec<BrokerAddress>,
    /// Partitions with fewer in-sync replicas than replicas.
    pub under_replicated: usize,
    /// Partitions this node leads.
    pub led_here: usize,
    /// Registered nodes the controller fenced (not heard from).
    pub fenced: Vec<i32>,
    /// Registered nodes being decommissioned.
    pub leaving: Vec<i32>,
    /// The nodes that vote in the metadata quorum; the others follow it.
    pub voters: Vec<i32>,
    /// Partitions whose leader is fenced (no in-sync replica could take
    /// over): unavailable until one returns.
    pub offline: usize,
    /// Over the partitions this node leads: in-sync set shrinks and
    /// expands, and the furthest-behind follower's lag.
    pub replication: ReplicationStats,
    /// How many times this node saw the controller change.
    pub controller_changes: u64,
    /// Metadata commits this node's writers made, and their total time.
    pub commits: u64,
    pub commit_micros: u64,
    /// Classic queues living on each node (their home), by node id.
    pub queue_homes: std::collections::BTreeMap<i32, usize>,
    /// Quorum queues each node leads.
    pub quorum_leaders: std::collections::BTreeMap<i32, usize>,
}

/// Where one partition of a cluster is, as the metadata says
/// ([`Broker::cluster_partitions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlacement {
    pub topic: String,
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    /// Leader first at creation (the first is the preferred leader).
    pub replicas: Vec<i32>,
    pub in_sync: Vec<i32>,
    /// Replicas on fenced nodes.
    pub offline_replicas: Vec<i32>,
}

impl PartitionPlacement {
    /// Fewer in-sync replicas than replicas.
    pub fn under_replicated(&self) -> bool {
        self.in_sync.len() < self.replicas.len()
    }

    /// Its leader is fenced: nobody serves it.
    pub fn offline(&self) -> bool {
        self.offline_replicas.contains(&self.leader)
    }
}

/// One running broker node.
///
/// Owned by the binary; front-ends hold it behind an `Arc` in later issues.
#[derive(Debug)]
pub struct Broker {
    data_dir: PathBuf,
    node_id: i32,
    admission: Admission,
    tasks: Arc<Tasks>,
    offsets_retention: std::time::Duration,
    logs: Arc<LogManager>,
    topics: Arc<Topics>,
    offsets: OffsetStore,
    transactions: transactions::TxnCoordinator,
    groups: Arc<GroupCoordinator>,
    consumer_groups: consumer_groups::ConsumerGroups,
    share_groups: share_groups::ShareGroups,
    producer_ids: ProducerIds,
    vhosts: VirtualHosts,
    connections: Arc<Connections>,
    /// A single node's retained MQTT messages (a cluster keeps them in
    /// its metadata).
    retained_log: Option<retained::RetainedLog>,
    metrics: ProtocolMetrics,
    started: std::time::Instant,
    disk_free_limit: u64,
    auto_create_topics: bool,
    default_partitions: u32,
    // Dropped last: the lock is held until every log is closed.
    _lock: DataDirLock,
}

impl Broker {
    /// Creates the data directory if needed, locks it, and opens the logs in it.
    ///
    /// # Errors
    /// [`CoreError::DataDirLocked`] when another process holds the directory;
    /// [`CoreError::DataDir`] when it cannot be created or locked;
    /// [`CoreError::Log`] when a log fails to open.
    ///
    /// Recovery is reported at INFO: how the last run ended, then one line
    /// per kind of state (logs, partitions, committed offsets, definitions
    /// and durable queues) with what was recovered and how long it took,
    /// and a progress line every `recovery_progress_interval` meanwhile.
    pub fn open(options: BrokerOptions) -> Result<Broker, CoreError> {
        let lock = DataDirLock::acquire(&options.data_dir)?;
        Broker::open_locked(options, lock)
    }

    /// As [`Broker::open`], on a data directory the caller has locked
    /// (a node of a cluster locks it before its quorum starts in it).
    ///
    /// # Errors
    /// As [`Broker::open`].
    pub fn open_locked(options: BrokerOptions, lock: DataDirLock) -> Result<Broker, CoreError> {
        let last_shutdown = recovery::LastShutdown::read(&options.data_dir);
        tracing::info!(
            last_shutdown = last_shutdown.as_str(),
            data_dir = %options.data_dir.display(),
            "recovering"
        );
        let progress = recovery::Progress::start(options.recovery_progress_interval);
        let since = |phase: std::time::Instant| phase.elapsed().as_millis() as u64;

        progress.phase("logs");
        let phase = std::time::Instant::now();
        let logs = Arc::new(LogManager::open_observed(
            &options.data_dir.join("logs"),
            options.log,
            // The lifecycle runs the passes (`Broker::run`).
            sluice_log::MaintenanceSettings {
                own_thread: false,
                ..options.maintenance
            },
            &|done, total| progress.advance(done, total),
        )?);
        tracing::info!(
            logs = logs.names().len(),
            elapsed_ms = since(phase),
            "recovered logs"
        );

        progress.phase("partitions");
        let phase = std::time::Instant::now();
        let metadata = match options.quorum_metadata {
            Some(metadata) => metadata,
            None => Metadata::open(&options.data_dir, &logs, options.node_id)?,
        };
        metadata.users().set_bootstrap(options.users.clone());
        let topics = Topics::open(
            Arc::clone(&logs),
            Arc::clone(&metadata),
            (options.limits.max_topics, options.default_replication),
        )?;
        let names = topics.names();
        let partitions: usize = names
            .iter()
            .filter_map(|name| topics.get(name))
            .map(|topic| topic.partition_count())
            .sum();
        tracing::info!(
            topics = names.len(),
            partitions,
            elapsed_ms = since(phase),
            "recovered partitions"
        );
        check_high_watermarks(&options.data_dir, &topics);

        progress.phase("committed offsets");
        let phase = std::time::Instant::now();
        let offsets = if metadata.clustered() {
            OffsetStore::replicated(
                &logs,
                Arc::clone(&topics),
                (options.offsets_partitions, options.offsets_replication),
                options.offsets_segment_bytes,
            )?
        } else {
            OffsetStore::open(&logs, options.offsets_segment_bytes)?
        };
        let producer_ids = ProducerIds::new(Arc::clone(&metadata));
        let transactions = if metadata.clustered() {
            transactions::TxnCoordinator::replicated(
                Arc::clone(&topics),
                (
                    options.transaction_state_partitions,
                    options.offsets_replication,
                ),
                options.offsets_segment_bytes,
                options.transaction_max_timeout_ms,
                options.transactional_id_expiration_ms,
            )
        } else {
            transactions::TxnCoordinator::open(
                &logs,
                options.transaction_max_timeout_ms,
                options.transactional_id_expiration_ms,
            )?
        };
        tracing::info!(
            groups = offsets.group_ids().len(),
            elapsed_ms = since(phase),
            "recovered consumer group offsets"
        );

        progress.phase("definitions and durable queues");
        let phase = std::time::Instant::now();
        let vhosts = VirtualHosts::open(
            &messaging::VhostShared {
                logs: Arc::clone(&logs),
                topics: Arc::clone(&topics),
                memory: messaging::ResourceMonitor::with_queue_budget(
                    options.memory_high_watermark,
                    options.queue_memory_bytes,
                ),
                clock: Arc::clone(&options.clock),
                max_queues: options.limits.max_queues,
            },
            messaging::definitions::DurableDefinitions {
                writer: messaging::definitions::DefinitionWriter::new(Arc::clone(&metadata)),
                stored: metadata.state().definitions.clone(),
            },
            &options.vhosts,
            &|done, total| progress.advance(done, total),
        )?;
        let summary = vhosts.recovered_summary();
        tracing::info!(
            exchanges = summary.exchanges,
            queues = summary.durable_queues,
            messages = summary.messages,
            bindings = summary.bindings,
            elapsed_ms = since(phase),
            "recovered definitions and durable queues"
        );
        recovery::LastShutdown::clear(&options.data_dir)?;
        tracing::info!(
            elapsed_ms = progress.elapsed().as_millis() as u64,
            "recovery complete"
        );
        drop(progress);
        let retained_log = if metadata.clustered() {
            None
        } else {
            Some(retained::RetainedLog::open(&logs, metadata.retained())?)
        };
        Ok(Broker {
            retained_log,
            data_dir: options.data_dir,
            node_id: options.node_id,
            admission: Admission::new(Arc::clone(vhosts.memory())),
            tasks: Arc::default(),
            offsets_retention: options.offsets_retention,
            logs,
            topics,
            offsets,
            transactions,
            groups: GroupCoordinator::new(options.groups),
            consumer_groups: consumer_groups::ConsumerGroups::new(
                options.consumer_groups,
                Arc::clone(metadata.group_configs()),
            ),
            share_groups: share_groups::ShareGroups::new(
                options.share_groups,
                Arc::clone(metadata.group_configs()),
            ),
            producer_ids,
            vhosts,
            connections: Connections::new(options.limits.connections),
            metrics: ProtocolMetrics::default(),
            started: std::time::Instant::now(),
            disk_free_limit: options.disk_free_limit,
            auto_create_topics: options.auto_create_topics,
            default_partitions: options.default_partitions.max(1),
            _lock: lock,
        })
    }

    /// The data directory this broker holds.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The logs this broker stores.
    /// Whether a write may go ahead while a resource alarm is raised.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Tasks that hold the broker until they end (connections): spawn
    /// them here so that shutdown waits for them.
    pub fn tasks(&self) -> &Arc<Tasks> {
        &self.tasks
    }

    /// How long committed offsets of an empty group are kept.
    pub fn offsets_retention(&self) -> std::time::Duration {
        self.offsets_retention
    }

    /// Writes every partition's high watermark to the checkpoint file.
    ///
    /// # Errors
    /// The file's I/O errors.
    pub fn checkpoint_high_watermarks(&self) -> Result<(), CoreError> {
        hw_checkpoint::write(&self.data_dir, &high_watermarks(&self.topics))
    }

    /// The size and the free space (bytes) of the file system holding the
    /// data directory.
    ///
    /// # Errors
    /// The `statvfs` failure.
    pub fn disk_space(&self) -> std::io::Result<(u64, u64)> {
        let stats = rustix::fs::statvfs(&self.data_dir)?;
        Ok((
            stats.f_blocks.saturating_mul(stats.f_frsize),
            stats.f_bavail.saturating_mul(stats.f_frsize),
        ))
    }

    /// This node's id (`node.id`).
    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// The cluster as this node sees it: its nodes, the controller, and
    /// how many partitions have fewer in-sync replicas than replicas.
    pub fn cluster_view(&self) -> ClusterView {
        use std::sync::atomic::Ordering::Relaxed;
        let metadata = self.topics.metadata();
        let fenced = metadata.fenced();
        let topics = self.topics.names();
        let mut under_replicated = 0;
        let mut led_here = 0;
        let mut offline = 0;
        let mut replication = ReplicationStats::default();
        for topic in topics.iter().filter_map(|name| self.topics.get(name)) {
            for partition in topic.partitions() {
                if let Some(stats) = partition.replication_stats() {
                    replication.in_sync_shrinks += stats.in_sync_shrinks;
                    replication.in_sync_expands += stats.in_sync_expands;
                    replication.follower_lag_records = replication
                        .follower_lag_records
                        .max(stats.follower_lag_records);
                    replication.follower_lag_ms =
                        replication.follower_lag_ms.max(stats.follower_lag_ms);
                }
            }
            for index in 0..topic.partition_count() as i32 {
                let id = sluice_types::PartitionId::from(index);
                let replicas = topic.replicas(id).unwrap_or_default().len();
                if replicas > 1 && topic.in_sync(id).len() < replicas {
                    under_replicated += 1;
                }
                if topic
                    .leader(id)
                    .is_some_and(|(leader, _)| fenced.contains(&leader))
                {
                    offline += 1;
                }
                if topic
                    .leader(id)
                    .map_or(replicas == 0, |(l, _)| l == self.node_id)
                {
                    led_here += 1;
                }
            }
        }
        ClusterView {
            clustered: self.topics.metadata().clustered(),
            node_id: self.node_id,
            controller: self.controller(),
            nodes: metadata.brokers(),
            under_replicated,
            led_here,
            fenced: fenced.into_iter().collect(),
            leaving: metadata.leaving().into_iter().collect(),
            voters: metadata.voters(),
            offline,
            replication,
            controller_changes: metadata.controller_changes(),
            commits: metadata.commit_times().count.load(Relaxed),
            commit_micros: metadata.commit_times().micros.load(Relaxed),
            queue_homes: metadata.queue_homes(),
            quorum_leaders: metadata.quorum_leaders(),
        }
    }

    /// Every partition of every topic as the metadata places it, on any
    /// node, sorted by topic and partition; empty on a cluster of one.
    pub fn cluster_partitions(&self) -> Vec<PartitionPlacement> {
        let metadata = self.topics.metadata();
        if !metadata.clustered() {
            return Vec::new();
        }
        let fenced = metadata.fenced();
        let mut placements = Vec::new();
        for name in self.topics.names() {
            let Some(topic) = self.topics.get(&name) else {
                continue;
            };
            for index in 0..topic.partition_count() as i32 {
                let id = sluice_types::PartitionId::from(index);
                let replicas = topic.replicas(id).unwrap_or_default();
                let Some((leader, leader_epoch)) = topic.leader(id) else {
                    continue;
                };
                placements.push(PartitionPlacement {
                    topic: name.clone(),
                    partition: index,
                    leader,
                    leader_epoch,
                    offline_replicas: replicas
                        .iter()
                        .copied()
                        .filter(|r| fenced.contains(r))
                        .collect(),
                    in_sync: topic.in_sync(id),
                    replicas,
                });
            }
        }
        placements
    }

    /// Registers where Kafka clients reach this node with the cluster
    /// (KRaft's broker registration), unless the metadata already says so,
    /// and reserves a block of producer ids for this node. Blocking.
    ///
    /// # Errors
    /// [`CoreError::Quorum`] when the quorum does not commit it.
    pub fn register(
        &self,
        host: &str,
        port: u16,
        listeners: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), CoreError> {
        let metadata = self.topics.metadata();
        let registered = metadata.brokers().iter().any(|b| {
            b.node == self.node_id && b.host == host && b.port == port && b.listeners == *listeners
        });
        if !metadata.clustered() {
            return Ok(());
        }
        if !registered {
            metadata.commit(MetadataCommand::RegisterBroker {
                node: self.node_id,
                host: host.to_owned(),
                port,
                listeners: listeners.clone(),
            })?;
            tracing::info!(
                node = self.node_id,
                host,
                port,
                "registered with the cluster"
            );
        }
        // A block of producer ids in hand, so idempotent producers start
        // here even while the controller cannot be reached.
        self.producer_ids.prefetch()
    }

    /// The controller (the metadata quorum's leader) as this node knows
    /// it: itself on a cluster of one, -1 while a cluster has none.
    pub fn controller(&self) -> i32 {
        match self.topics.metadata().quorum() {
            Some(quorum) => quorum.controller().unwrap_or(-1),
            None if self.topics.metadata().clustered() => -1,
            None => self.node_id,
        }
    }

    /// The log settings a topic starts from before its own overrides.
    pub fn log_defaults(&self) -> &LogConfig {
        self.logs.defaults()
    }

    pub fn logs(&self) -> &LogManager {
        &self.logs
    }

    /// Committed consumer offsets.
    pub fn offsets(&self) -> &OffsetStore {
        &self.offsets
    }

    /// Writes a transaction marker of `producer_id` at `producer_epoch`
    /// on partition `partition` of `topic`, which this node leads (see
    /// [`Topic::write_marker`]); on the committed offsets topic of a
    /// cluster the transaction's offsets there become the groups'
    /// committed offsets (or are dropped). Blocking.
    ///
    /// # Errors
    /// [`CoreError::UnknownTopic`], and [`Topic::write_marker`]'s.
    pub fn write_marker(
        &self,
        topic: &str,
        partition: i32,
        producer_id: i64,
        producer_epoch: i16,
        marker: transactions::Marker,
    ) -> Result<(), CoreError> {
        let found = self
            .topics
            .get(topic)
            .ok_or_else(|| CoreError::UnknownTopic {
                topic: topic.to_owned(),
            })?;
        found.write_marker(
            sluice_types::PartitionId::from(partition),
            producer_id,
            producer_epoch,
            marker,
        )?;
        if topic == OFFSETS_TOPIC
            && let Ok(index) = u32::try_from(partition)
        {
            self.offsets.complete_txn(
                index,
                producer_id,
                marker.outcome == transactions::Outcome::Commit,
            );
        }
        Ok(())
    }

    /// Producer ids for idempotent producers.
    pub fn producer_ids(&self) -> &ProducerIds {
        &self.producer_ids
    }

    /// The transaction coordinator.
    pub fn transactions(&self) -> &transactions::TxnCoordinator {
        &self.transactions
    }

    /// Consumer group membership.
    pub fn groups(&self) -> &Arc<GroupCoordinator> {
        &self.groups
    }

    /// Consumer groups of the new protocol (KIP-848).
    pub fn consumer_groups(&self) -> &consumer_groups::ConsumerGroups {
        &self.consumer_groups
    }

    /// Share groups (KIP-932).
    pub fn share_groups(&self) -> &share_groups::ShareGroups {
        &self.share_groups
    }

    /// Stores the membership of consumer group `group` (or of every
    /// group, `None`) where it changed since last stored: a committed
    /// offset of the group under [`consumer_groups::MEMBERSHIP_TOPIC`], in
    /// the offsets log a cluster replicates, for the group's next
    /// coordinator. Blocking; what fails to store is tried again by the
    /// next call.
    ///
    /// # Errors
    /// The first store that failed (the others are still tried).
    pub fn store_consumer_groups(&self, group: Option<&str>) -> Result<(), CoreError> {
        let _storing = self.consumer_groups.storing();
        let mut outcome = Ok(());
        for (group, text) in self.consumer_groups.changed(group) {
            let membership = consumer_groups::MEMBERSHIP_TOPIC.to_owned();
            // A group left with no members leaves no snapshot behind.
            let stored = if text.is_empty() {
                self.offsets.delete(&group, &[(membership, 0)])
            } else {
                let committed = CommittedOffset {
                    offset: 0,
                    leader_epoch: -1,
                    metadata: Some(text.clone()),
                };
                self.offsets.commit(&group, &[(membership, 0, committed)])
            };
            match stored {
                Ok(()) => self.consumer_groups.mark_stored(&group, text),
                Err(error) => {
                    tracing::warn!(%error, group, "consumer group membership not stored yet");
                    if outcome.is_ok() {
                        outcome = Err(error);
                    }
                }
            }
        }
        outcome
    }

    /// Consumer groups left with classic members only (the last member
    /// of the new protocol left or was fenced) become classic groups
    /// again, which rebalance (Kafka's online downgrade).
    pub fn downgrade_consumer_groups(&self) {
        self.consumer_groups
            .downgrade(|group_id, generation, members| {
                self.groups.adopt(group_id, generation, members)
            });
    }

    /// `group`'s settings: the keys set on it (group configs).
    pub fn group_config(&self, group: &str) -> GroupConfig {
        self.topics
            .metadata()
            .group_configs()
            .get(group)
            .map(|config| (*config).clone())
            .unwrap_or_default()
    }

    /// The groups with settings of their own.
    pub fn configured_groups(&self) -> Vec<String> {
        self.topics
            .metadata()
            .group_configs()
            .all()
            .into_keys()
            .collect()
    }

    /// Every key of `group`'s settings with its value and source.
    pub fn group_config_entries(&self, group: &str) -> Vec<ConfigEntry> {
        self.group_config(group).entries(
            self.consumer_groups.base_settings(),
            self.share_groups.base_settings(),
        )
    }

    /// Alters `group`'s settings: `change` turns the current ones into
    /// the new ones, which are checked together against the broker's and
    /// (unless `validate_only`) committed, on every node of a cluster.
    /// Committed only if the settings did not change meanwhile; else
    /// `change` runs again on the new ones, a few times. Blocking.
    ///
    /// # Errors
    /// [`CoreError::InvalidConfig`] (an empty group id too),
    /// [`CoreError::GroupConfigChanged`] when they kept changing, or the
    /// commit's.
    pub fn alter_group_config(
        &self,
        group: &str,
        validate_only: bool,
        change: impl Fn(GroupConfig) -> Result<GroupConfig, CoreError>,
    ) -> Result<(), CoreError> {
        if group.is_empty() {
            return Err(CoreError::InvalidConfig {
                key: String::new(),
                reason: "the group id is empty".to_owned(),
            });
        }
        let mut outcome = Ok(());
        for _ in 0..5 {
            let before = self.group_config(group);
            let after = change(before.clone())?;
            after.check(
                self.consumer_groups.base_settings(),
                self.share_groups.base_settings(),
            )?;
            if validate_only {
                return Ok(());
            }
            outcome = self
                .topics
                .metadata()
                .set_group_config(group, &before, &after);
            if !matches!(outcome, Err(CoreError::GroupConfigChanged { .. })) {
                return outcome;
            }
        }
        outcome
    }

    /// The broker's users, as applied on this node.
    pub fn users(&self) -> &Arc<Users> {
        self.topics.metadata().users()
    }

    /// The Kafka ACLs as applied on this node.
    pub fn acls(&self) -> &Arc<acls::Acls> {
        self.topics.metadata().acls()
    }

    /// The AMQP permissions as applied on this node.
    pub fn permissions(&self) -> &Arc<permissions::Permissions> {
        self.topics.metadata().permissions()
    }

    /// Every user's AMQP permissions and topic permissions.
    pub fn permission_maps(&self) -> (permissions::PermissionMap, permissions::TopicPermissionMap) {
        self.topics.metadata().permission_maps()
    }

    /// Sets (or with `None` clears) `user`'s permissions on `vhost`.
    /// Blocking.
    ///
    /// # Errors
    /// [`CoreError::InvalidConfig`] for an invalid expression or an
    /// unknown virtual host, [`CoreError::UnknownUser`], or the commit's.
    pub fn set_permission(
        &self,
        user: &str,
        vhost: &str,
        permission: Option<permissions::VhostPermission>,
    ) -> Result<(), CoreError> {
        self.check_vhost(vhost)?;
        if let Some(p) = &permission {
            check_expressions(&[&p.configure, &p.write, &p.read])?;
        }
        tracing::info!(
            user,
            vhost,
            set = permission.is_some(),
            "permissions changed"
        );
        self.topics
            .metadata()
            .change_user(MetadataCommand::SetPermission {
                user: user.to_owned(),
                vhost: vhost.to_owned(),
                permission,
            })
    }

    /// The MQTT retained messages as applied on this node.
    pub fn retained(&self) -> &Arc<retained::Retained> {
        self.topics.metadata().retained()
    }

    /// Sets (or with `None` clears) the MQTT retained message of `topic`
    /// in `vhost`: in the node's retained log, or on a cluster through the
    /// quorum. Blocking.
    ///
    /// # Errors
    /// The commit's.
    pub fn set_retained(
        &self,
        vhost: &str,
        topic: &str,
        message: Option<retained::RetainedMessage>,
    ) -> Result<(), CoreError> {
        if let Some(log) = &self.retained_log {
            return log.set(self.retained(), vhost, topic, message);
        }
        self.topics
            .metadata()
            .change_user(MetadataCommand::SetRetained {
                vhost: vhost.to_owned(),
                topic: topic.to_owned(),
                message,
            })
    }

    /// The virtual host and user limits as applied on this node.
    pub fn limits(&self) -> &Arc<limits::Limits> {
        self.topics.metadata().limits()
    }

    /// Sets (or with `None` clears) a virtual host's or user's limit
    /// `name` (`max-connections`, `max-queues` for a virtual host;
    /// `max-connections`, `max-channels` for a user); a negative value
    /// means no limit. Blocking.
    ///
    /// # Errors
    /// [`CoreError::InvalidConfig`] for an unknown virtual host or limit
    /// name, [`CoreError::UnknownUser`], or the commit's.
    pub fn set_limit(
        &self,
        scope: limits::LimitScope,
        name: &str,
        value: Option<i64>,
    ) -> Result<(), CoreError> {
        // A limit is cleared even on a virtual host no longer configured.
        if let (limits::LimitScope::Vhost(vhost), Some(_)) = (&scope, value) {
            self.check_vhost(vhost)?;
        }
        if !scope.names().contains(&name) {
            return Err(CoreError::InvalidConfig {
                key: name.to_owned(),
                reason: format!(
                    "unknown limit {name:?}; a {} takes {}",
                    match scope {
                        limits::LimitScope::Vhost(_) => "virtual host",
                        limits::LimitScope::User(_) => "user",
                    },
                    scope.names().join(" and ")
                ),
            });
        }
        tracing::info!(?scope, name, ?value, "limit changed");
        self.topics
            .metadata()
            .change_user(MetadataCommand::SetLimit {
                scope,
                name: name.to_owned(),
                value,
            })
    }

    /// The Kafka client quotas as applied on this node, and the rates
    /// measured against them.
    pub fn client_quotas(&self) -> &Arc<quotas::ClientQuotas> {
        self.topics.metadata().client_quotas()
    }

    /// Changes the quotas of one entity (AlterClientQuotas): each key set
    /// or, with `None`, removed, all at once. Blocking.
    ///
    /// # Errors
    /// [`CoreError::InvalidConfig`] for an unknown key or a bad value, or
    /// the commit's.
    pub fn alter_client_quota(
        &self,
        entity: quotas::QuotaEntity,
        changes: Vec<(String, Option<f64>)>,
    ) -> Result<(), CoreError> {
        for (key, value) in &changes {
            if let Some(value) = value {
                quotas::validate(key, *value).map_err(|reason| CoreError::InvalidConfig {
                    key: key.clone(),
                    reason,
                })?;
            }
        }
        tracing::info!(?entity, ?changes, "client quotas changed");
        self.topics
            .metadata()
            .change_user(MetadataCommand::AlterClientQuota { entity, changes })
    }

    /// A client here took a client id (an MQTT session): every other
    /// live node of the cluster ends its holder of it, as the node a
    /// client connects to ends its own, and settles a will waiting for its
    /// delay. Returns once every node answered or `timeout` passed (a node
    /// that does not answer may keep its holder until its link or keep
    /// alive ends it). Blocking; nothing to do on a single node.
    pub fn take_over_elsewhere(&self, takeover: &Takeover, timeout: std::time::Duration) {
        let others = self.other_live_nodes();
        if others.is_empty() {
            return;
        }
        let vhosts = self.vhosts();
        std::thread::scope(|scope| {
            let asked: Vec<_> = others
                .iter()
                .map(|node| scope.spawn(move || vhosts.take_over_on(*node, takeover, timeout)))
                .collect();
            for (node, answer) in others.iter().zip(asked) {
                if !matches!(answer.join(), Ok(true)) {
                    tracing::debug!(
                        node,
                        client_id = %takeover.client_id,
                        "a node did not answer a session takeover"
                    );
                }
            }
        });
    }

    /// AMQP connections open to `vhost`, AMQP connections of `user`, and
    /// the channels those have open, over every live node of the cluster
    /// (a node that does not answer within a second is not counted).
    /// Blocking.
    pub fn amqp_counts(&self, vhost: &str, user: &str) -> connections::AmqpCounts {
        let mut counts = self.connections().amqp_counts(vhost, user);
        let others = self.other_live_nodes();
        if !others.is_empty() {
            let vhosts = self.vhosts();
            std::thread::scope(|scope| {
                let asked: Vec<_> = others
                    .iter()
                    .map(|node| {
                        scope.spawn(move || {
                            vhosts.amqp_counts_on(
                                *node,
                                vhost,
                                user,
                                std::time::Duration::from_secs(1),
                            )
                        })
                    })
                    .collect();
                for (node, answer) in others.iter().zip(asked) {
                    match answer.join() {
                        Ok(Some(theirs)) => counts.add(theirs),
                        // Let through, as RabbitMQ does, but say so.
                        _ => tracing::debug!(
                            node,
                            vhost,
                            user,
                            "a node did not count its AMQP connections for a limit"
                        ),
                    }
                }
            });
        }
        counts
    }

    /// Sets (or with `None` clears) `user`'s topic permission on
    /// `exchange` of `vhost`. Blocking.
    ///
    /// # Errors
    /// As [`Broker::set_permission`].
    pub fn set_topic_permission(
        &self,
        user: &str,
        vhost: &str,
        exchange: &str,
        permission: Option<permissions::TopicPermission>,
    ) -> Result<(), CoreError> {
        self.check_vhost(vhost)?;
        if let Some(p) = &permission {
            check_expressions(&[&p.write, &p.read])?;
        }
        tracing::info!(
            user,
            vhost,
            exchange,
            set = permission.is_some(),
            "topic permissions changed"
        );
        self.topics
            .metadata()
            .change_user(MetadataCommand::SetTopicPermission {
                user: user.to_owned(),
                vhost: vhost.to_owned(),
                exchange: exchange.to_owned(),
                permission,
            })
    }

    fn check_vhost(&self, vhost: &str) -> Result<(), CoreError> {
        if self.vhosts.get(vhost).is_none() {
            return Err(CoreError::InvalidConfig {
                key: "vhost".to_owned(),
                reason: format!("no virtual host {vhost:?}"),
            });
        }
        Ok(())
    }

    /// Grants every user there is full permissions on every virtual host,
    /// once (the users from before permissions existed, and the
    /// configuration's). Blocking.
    ///
    /// # Errors
    /// The commit's.
    pub fn bootstrap_permissions(&self) -> Result<(), CoreError> {
        if self.permissions().bootstrapped() {
            return Ok(());
        }
        let vhosts = self
            .vhosts
            .all()
            .iter()
            .map(|v| v.name().to_owned())
            .collect();
        self.topics
            .metadata()
            .change_user(MetadataCommand::BootstrapPermissions { vhosts })
    }

    /// Adds Kafka ACLs (those already there stay once). Blocking.
    ///
    /// # Errors
    /// The commit's.
    pub fn create_acls(&self, acls: Vec<acls::AclBinding>) -> Result<(), CoreError> {
        tracing::info!(count = acls.len(), "ACLs created");
        self.topics
            .metadata()
            .change_acls(MetadataCommand::CreateAcls { acls })
    }

    /// Removes every Kafka ACL `filters` match; returns what each matched
    /// here before the change. The filters travel in the command and are
    /// matched where it is applied, so on a cluster an ACL this node had
    /// not applied yet goes too (it is then missing from the answer).
    /// Blocking.
    ///
    /// # Errors
    /// The commit's.
    pub fn delete_acls(
        &self,
        filters: Vec<acls::AclFilter>,
    ) -> Result<Vec<Vec<acls::AclBinding>>, CoreError> {
        let matched: Vec<Vec<acls::AclBinding>> =
            filters.iter().map(|f| self.acls().describe(f)).collect();
        if !filters.is_empty() {
            tracing::info!(filters = filters.len(), "ACLs deleted");
            self.topics
                .metadata()
                .change_acls(MetadataCommand::DeleteAcls { filters })?;
        }
        Ok(matched)
    }

    /// Adds or replaces the user `name` (`create_only`: refused when it
    /// exists). Blocking.
    ///
    /// # Errors
    /// [`CoreError::InvalidConfig`] for a name no user may have,
    /// [`CoreError::UserExists`], or the commit's.
    pub fn put_user(
        &self,
        name: &str,
        user: UserRecord,
        create_only: bool,
    ) -> Result<(), CoreError> {
        check_user_name(name)?;
        tracing::info!(user = %name, "user changed");
        self.topics
            .metadata()
            .change_user(MetadataCommand::PutUser {
                name: name.to_owned(),
                user,
                create_only,
            })
    }

    /// Deletes the user `name`. Blocking.
    ///
    /// # Errors
    /// [`CoreError::UnknownUser`], or the commit's.
    pub fn delete_user(&self, name: &str) -> Result<(), CoreError> {
        tracing::info!(user = %name, "user deleted");
        self.topics
            .metadata()
            .change_user(MetadataCommand::DeleteUser {
                name: name.to_owned(),
            })
    }

    /// Sets (or, with `None`, removes) one SCRAM credential of `name`.
    /// Blocking.
    ///
    /// # Errors
    /// [`CoreError::InvalidConfig`] for a name no user may have,
    /// [`CoreError::UnknownUser`] when removing what is not there, or the
    /// commit's.
    pub fn set_scram_credential(
        &self,
        name: &str,
        mechanism: ScramMechanism,
        credential: Option<ScramCredential>,
    ) -> Result<(), CoreError> {
        check_user_name(name)?;
        tracing::info!(user = %name, mechanism = mechanism.name(), removed = credential.is_none(), "SCRAM credential changed");
        self.topics
            .metadata()
            .change_user(MetadataCommand::SetScramCredential {
                name: name.to_owned(),
                mechanism,
                credential,
            })
    }

    /// Hands the configuration's users to the metadata, which takes them
    /// only if it never took any. Blocking.
    ///
    /// # Errors
    /// The commit's (a cluster's quorum not ready yet, say).
    pub fn bootstrap_users(&self) -> Result<(), CoreError> {
        let users = self.users();
        if users.bootstrapped() {
            return Ok(());
        }
        self.topics
            .metadata()
            .change_user(MetadataCommand::BootstrapUsers {
                users: users.bootstrap_users(),
                vhosts: Some(
                    self.vhosts
                        .all()
                        .iter()
                        .map(|v| v.name().to_owned())
                        .collect(),
                ),
            })
    }

    /// The topics as KIP-848 groups see them: id and partition count by
    /// name, internal topics marked.
    pub fn topic_catalog(&self) -> consumer_groups::TopicCatalog {
        let mut catalog = consumer_groups::TopicCatalog::new();
        for name in self.topics.names() {
            if let Some(topic) = self.topics.get(&name) {
                let internal = name == OFFSETS_TOPIC || name == transactions::TXN_STATE_TOPIC;
                catalog.insert(
                    &name,
                    topic.id(),
                    u32::try_from(topic.partition_count()).unwrap_or(u32::MAX),
                    internal,
                );
            }
        }
        catalog
    }

    /// AMQP virtual hosts with their exchanges and queues.
    pub fn vhosts(&self) -> &VirtualHosts {
        &self.vhosts
    }

    /// Checks the data directory's free space against the configured limit
    /// and raises or clears the disk alarm. Blocking (one `statvfs`).
    pub fn check_disk(&self) {
        if let Err(error) = self
            .vhosts
            .memory()
            .check_disk(&self.data_dir, self.disk_free_limit)
        {
            tracing::warn!(%error, "cannot read the data directory's free space");
        }
    }

    /// Open client connections of both protocols.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// Request counts and latencies per protocol.
    pub fn metrics(&self) -> &ProtocolMetrics {
        &self.metrics
    }

    /// How long the broker has been running.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The broker's topics.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Replaces a topic's settings (AlterConfigs, the admin API). Blocking.
    ///
    /// When this switches forwarding on, or to another exchange, each
    /// partition's forwarding position is first stored as its current end
    /// (`sluice.forward.start` = `latest`, the default) or its log start
    /// (`earliest`), replacing a position left from an earlier spell of
    /// forwarding to that exchange: forwarding covers the records produced
    /// from now on (or the whole log), also when the broker crashes before
    /// the forwarder's first batch. A change that keeps the exchange (the
    /// routing key, say) keeps the positions.
    ///
    /// # Errors
    /// [`CoreError::UnknownTopic`], or I/O storing the config or positions.
    pub fn set_topic_config(&self, name: &str, config: TopicConfig) -> Result<(), CoreError> {
        config.check()?;
        let topic = self
            .topics
            .get(name)
            .ok_or_else(|| CoreError::UnknownTopic {
                topic: name.to_owned(),
            })?;
        let group = config
            .forwarding()
            .map(|f| (forwarding::forward_group(&f), f));
        let before = topic
            .config()
            .forwarding()
            .map(|f| forwarding::forward_group(&f));
        if let Some((group, forwarding)) = group
            && before.as_ref() != Some(&group)
        {
            let positions: Vec<(String, i32, CommittedOffset)> = topic
                .partitions()
                .iter()
                .map(|partition| {
                    let start = if forwarding.from_earliest {
                        partition.log_start()
                    } else {
                        partition.high_watermark()
                    };
                    (
                        name.to_owned(),
                        partition.id().get(),
                        CommittedOffset {
                            offset: start.get(),
                            leader_epoch: -1,
                            metadata: None,
                        },
                    )
                })
                .collect();
            self.offsets.commit(&group, &positions)?;
        }
        self.topics.set_config(name, config)
    }

    /// Whether a write or a Metadata request may create a missing topic
    /// (`kafka.auto_create_topics`).
    pub fn auto_create_topics(&self) -> bool {
        self.auto_create_topics
    }

    /// The topic called `name`; created with the default partition count if
    /// it does not exist and auto-creation is on. Blocking when it creates.
    ///
    /// # Errors
    /// [`CoreError::UnknownTopic`] when it does not exist and may not be
    /// created; creation errors otherwise.
    pub fn topic_or_create(&self, name: &str) -> Result<Arc<Topic>, CoreError> {
        if let Some(topic) = self.topics.get(name) {
            return Ok(topic);
        }
        if !self.auto_create_topics {
            return Err(CoreError::UnknownTopic {
                topic: name.to_owned(),
            });
        }
        self.topics
            .create_or_get(name, self.default_partitions, TopicConfig::default())
    }

    /// Writes pending queue settlements, then syncs and closes every log.
    /// Tasks that still hold the broker afterwards get
    /// [`sluice_log::LogError::Closed`] from any log; the data directory is
    /// released when the broker is dropped.
    ///
    /// # Errors
    /// [`CoreError::Log`] when a log fails to sync or close.
    pub fn shutdown(&self) -> Result<(), CoreError> {
        if let Err(error) = self.vhosts.flush() {
            tracing::warn!(%error, "cannot write queue settlements before shutdown");
        }
        if let Err(error) = self.checkpoint_high_watermarks() {
            tracing::warn!(%error, "cannot write the high watermark checkpoint");
        }
        self.logs.shutdown()?;
        recovery::LastShutdown::mark_clean(&self.data_dir)?;
        Ok(())
    }
}

/// Permission expressions that compile, or the first that does not.
fn check_expressions(expressions: &[&str]) -> Result<(), CoreError> {
    permissions::validate(expressions).map_err(|reason| CoreError::InvalidConfig {
        key: "permission".to_owned(),
        reason,
    })
}
