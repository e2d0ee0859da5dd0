//! `sluice serve`: start tracing, open the broker, start the Kafka, AMQP
//! and HTTP listeners, wait for SIGINT or SIGTERM, shut down.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use std::sync::Arc;

use sluice_cluster::{ClusterQuorum, CoreMachine, MetadataNode, RaftSettings};
use sluice_config::{
    AmqpConfig, Config, DurabilityMode, KafkaConfig, LogFormat, LogSettings, split_list,
};
use sluice_core::consumer_groups::{Assignor, ConsumerGroupSettings, MigrationPolicy};
use sluice_core::share_groups::{ShareReset, ShareSettings};
use sluice_core::{
    Broker, BrokerOptions, ConnectionLimits, DataDirLock, GroupSettings, Lifecycle, Limits,
    Metadata, MetadataMachine, UserRecord,
};
use sluice_kafka::{KafkaOptions, SaslOptions, SecurityProtocol};
use sluice_log::{Durability, LogConfig, MaintenanceSettings};
use sluice_tls::{ClientAuth, Tls, TlsSettings};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::cli::SettingsArgs;

/// The effective configuration: the values that differ from the defaults
/// as one line at INFO (secrets masked), every value at DEBUG.
fn log_configuration(loaded: &sluice_config::LoadedConfig) {
    let changed: Vec<String> = loaded
        .values()
        .iter()
        .filter(|value| value.source != sluice_config::Source::Default)
        .map(|value| format!("{}={} ({})", value.key, value.value, value.source))
        .collect();
    if changed.is_empty() {
        info!("configuration: all defaults");
    } else {
        info!(settings = %changed.join(", "), "configuration (values other than the defaults)");
    }
    for value in loaded.values() {
        tracing::debug!(
            key = value.key,
            value = %value.value,
            source = %value.source,
            "effective configuration"
        );
    }
}

/// Runs a node until SIGINT or SIGTERM.
pub(crate) fn run(settings: &SettingsArgs) -> anyhow::Result<()> {
    let loaded = settings.load()?;
    let config = loaded.config();
    init_tracing(config.logging.format)?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        node = config.node.id,
        data_dir = %config.data_dir.display(),
        "sluice starting"
    );
    log_configuration(&loaded);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    // Handlers go in before the broker opens, so a signal that arrives while
    // logs recover still leads to a clean shutdown instead of the default kill.
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let options = BrokerOptions {
        data_dir: config.data_dir.clone(),
        node_id: config.node.id,
        log: log_config(&config.log)?,
        auto_create_topics: config.kafka.auto_create_topics,
        default_partitions: config.kafka.default_partitions,
        vhosts: split_list(&config.amqp.vhosts)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        memory_high_watermark: config.amqp.memory_high_watermark.bytes(),
        queue_memory_bytes: config.amqp.queue_memory_bytes.bytes(),
        offsets_segment_bytes: config.kafka.offsets_segment_bytes.bytes(),
        offsets_partitions: config.kafka.offsets_partitions,
        transaction_state_partitions: config.kafka.transaction_state_partitions,
        offsets_retention: config.kafka.offsets_retention.get(),
        transaction_max_timeout_ms: i32::try_from(
            config.kafka.transaction_max_timeout.get().as_millis(),
        )
        .unwrap_or(i32::MAX),
        transactional_id_expiration_ms: i64::try_from(
            config.kafka.transactional_id_expiration.get().as_millis(),
        )
        .unwrap_or(i64::MAX),
        groups: GroupSettings {
            min_session_timeout: config.kafka.group_min_session_timeout.get(),
            max_session_timeout: config.kafka.group_max_session_timeout.get(),
            initial_rebalance_delay: config.kafka.group_initial_rebalance_delay.get(),
        },
        consumer_groups: ConsumerGroupSettings {
            session_timeout: config.kafka.group_consumer_session_timeout.get(),
            heartbeat_interval: config.kafka.group_consumer_heartbeat_interval.get(),
            // Validated by the configuration.
            assignors: config
                .kafka
                .group_consumer_assignors
                .split(',')
                .filter_map(|name| Assignor::parse(name.trim()))
                .collect(),
            max_size: config.kafka.group_consumer_max_size as usize,
            // Validated by the configuration.
            migration: MigrationPolicy::parse(&config.kafka.group_migration_policy)
                .unwrap_or(MigrationPolicy::Bidirectional),
        },
        share_groups: ShareSettings {
            lock_duration: config.kafka.group_share_record_lock_duration.get(),
            delivery_limit: config.kafka.group_share_delivery_count_limit,
            max_record_locks: config.kafka.group_share_max_record_locks as usize,
            session_timeout: config.kafka.group_share_session_timeout.get(),
            heartbeat_interval: config.kafka.group_share_heartbeat_interval.get(),
            // Validated by the configuration.
            auto_offset_reset: if config.kafka.share_auto_offset_reset == "earliest" {
                ShareReset::Earliest
            } else {
                ShareReset::Latest
            },
        },
        disk_free_limit: config.amqp.disk_free_limit.bytes(),
        limits: Limits {
            connections: ConnectionLimits {
                total: config.limits.max_connections,
                per_ip: config.limits.max_connections_per_ip,
            },
            max_topics: config.limits.max_topics,
            max_queues: config.limits.max_queues,
        },
        maintenance: MaintenanceSettings {
            retention_check_interval: config.log.retention_check_interval.get(),
            compaction_check_interval: config.log.compaction_check_interval.get(),
            ..MaintenanceSettings::default()
        },
        recovery_progress_interval: config.logging.progress_interval.get(),
        users: users(&config.amqp),
        ..BrokerOptions::new(&config.data_dir)
    };
    let link_tls = link_tls(config)?;
    let (options, quorum, replica_streams, message_streams) = join_cluster(config, options).await?;
    let broker = tokio::task::spawn_blocking(move || match options {
        Opening::Alone(options) => Broker::open(options),
        Opening::Clustered(options, lock) => Broker::open_locked(options, lock),
    })
    .await
    .context("broker start-up task failed")?
    .context("cannot start the broker")?;
    let broker = Arc::new(broker);

    // Group and offset expiry, queue maintenance, the disk check, the high
    // watermark checkpoint and the forwarders; the listeners run through it
    // too, so one shutdown stops everything in order.
    let mut lifecycle = broker.run();
    if let Some(link) = link_tls {
        let stopping = lifecycle.stopping();
        lifecycle.serve(Arc::clone(link.server()).watch(stopping));
    }
    let bound = async {
        let tls = load_tls(config, &mut lifecycle)?;
        let kafka = start_kafka(
            &config.kafka,
            tls.as_ref(),
            Arc::clone(&broker),
            replica_streams,
            &mut lifecycle,
        )
        .await?;
        if let Some(node) = &quorum {
            // Messages routed to this node's queues from other nodes, and
            // this node's messages for theirs.
            if let Some(streams) = message_streams {
                let stopping = lifecycle.stopping();
                lifecycle.serve(sluice_cluster::messages::serve(
                    Arc::clone(&broker),
                    streams,
                    stopping,
                ));
            }
            broker
                .vhosts()
                .attach_remote_queues(Arc::new(sluice_cluster::messages::Carrier::new(
                    Arc::clone(node),
                    tokio::runtime::Handle::current(),
                )));
            broker
                .transactions()
                .attach_peers(Arc::new(sluice_cluster::txn_links::TxnLinks::new(
                    Arc::clone(node),
                    tokio::runtime::Handle::current(),
                    broker.node_id(),
                )));
            let stopping = lifecycle.stopping();
            lifecycle.serve(sluice_cluster::quorum::run_controller(
                Arc::clone(node),
                Arc::clone(&broker),
                config.cluster.session_timeout.get(),
                stopping,
            ));
            let stopping = lifecycle.stopping();
            lifecycle.serve(sluice_cluster::quorum::register(
                Arc::clone(&broker),
                kafka.host.clone(),
                kafka.port,
                kafka.advertised.clone(),
                stopping,
            ));
            let stopping = lifecycle.stopping();
            lifecycle.serve(sluice_cluster::replica::run_fetchers(
                Arc::clone(&broker),
                Arc::clone(node),
                stopping,
            ));
            let stopping = lifecycle.stopping();
            lifecycle.serve(sluice_cluster::replica::run_in_sync_checks(
                Arc::clone(&broker),
                config.cluster.replica_lag_max.get(),
                stopping,
            ));
        }
        let amqp = start_amqp(config, tls.as_ref(), Arc::clone(&broker), &mut lifecycle).await?;
        let mqtt = start_mqtt(config, tls.as_ref(), Arc::clone(&broker), &mut lifecycle).await?;
        let stomp = start_stomp(config, tls.as_ref(), Arc::clone(&broker), &mut lifecycle).await?;
        let http = bind(config.http.listen.as_str(), "HTTP", "http.listen").await?;
        let http_tls = if config.http.tls {
            Some(
                tls.clone()
                    .context("http.tls asks for TLS: set tls.cert_file and tls.key_file")?,
            )
        } else {
            None
        };
        anyhow::Ok((kafka, (amqp, mqtt, stomp), http, http_tls))
    }
    .await;
    let (
        kafka,
        (
            (amqp_address, amqps_address),
            (mqtt_address, mqtts_address, mqtt_websocket),
            (stomp_address, stomps_address, stomp_websocket),
        ),
        (listener, http_address),
        http_tls,
    ) = match bound {
        Ok(bound) => bound,
        Err(error) => {
            // A listener that cannot bind (the port is taken, say) ends the
            // start, but the logs still close cleanly, so the next start
            // reads a clean shutdown.
            lifecycle.shutdown(SHUTDOWN_GRACE).await;
            let closing = Arc::clone(&broker);
            match tokio::task::spawn_blocking(move || closing.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(shutdown)) => tracing::warn!(error = %shutdown, "closing the logs failed"),
                Err(_) => tracing::warn!("closing the logs failed"),
            }
            return Err(error);
        }
    };
    let http_protocol = if http_tls.is_some() { "https" } else { "http" };
    info!(listen = %http_address, protocol = http_protocol, "http listening");
    info!(
        version = env!("CARGO_PKG_VERSION"),
        node = broker.node_id(),
        data_dir = %broker.data_dir().display(),
        kafka = %kafka.bound,
        amqp = %amqp_address,
        mqtt = %mqtt_address,
        stomp = %stomp_address,
        http = %http_address,
        "broker started"
    );
    // The main Kafka listener by its address, the others by name too.
    let mut listeners: Vec<sluice_http::ListenerInfo> = kafka
        .all
        .iter()
        .enumerate()
        .map(|(index, (name, address))| sluice_http::ListenerInfo {
            protocol: "kafka",
            address: if index == 0 {
                address.to_string()
            } else {
                format!("{name}://{address}")
            },
        })
        .collect();
    listeners.push(sluice_http::ListenerInfo {
        protocol: "amqp",
        address: amqp_address.to_string(),
    });
    if let Some(address) = amqps_address {
        listeners.push(sluice_http::ListenerInfo {
            protocol: "amqps",
            address: address.to_string(),
        });
    }
    listeners.push(sluice_http::ListenerInfo {
        protocol: "mqtt",
        address: mqtt_address.to_string(),
    });
    if let Some(address) = mqtts_address {
        listeners.push(sluice_http::ListenerInfo {
            protocol: "mqtts",
            address: address.to_string(),
        });
    }
    listeners.push(sluice_http::ListenerInfo {
        protocol: "stomp",
        address: stomp_address.to_string(),
    });
    if let Some(address) = stomps_address {
        listeners.push(sluice_http::ListenerInfo {
            protocol: "stomps",
            address: address.to_string(),
        });
    }
    listeners.push(sluice_http::ListenerInfo {
        protocol: http_protocol,
        address: http_address.to_string(),
    });
    let stopping = lifecycle.stopping();
    lifecycle.serve(sluice_http::serve(
        listener,
        Arc::clone(&broker),
        sluice_http::HttpOptions {
            listeners,
            websockets: vec![mqtt_websocket, stomp_websocket],
        },
        http_tls,
        stopping,
    ));

    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    info!(signal = signal_name, "shutting down");
    // The listeners stop accepting; connections end at their next request
    // boundary (AMQP ones after connection.close 320) and the lifecycle
    // waits, bounded, for them, then stops the background work. The logs
    // close only after that, so no acknowledged append is cut short.
    let waited = std::time::Instant::now();
    let aborted = lifecycle.shutdown(SHUTDOWN_GRACE).await;
    if aborted > 0 {
        tracing::warn!(
            connections = aborted,
            "connections still open after {SHUTDOWN_GRACE:?} were aborted; closing the logs"
        );
    }
    // The quorum stops before the logs close: nothing it applies may
    // reach a closed log.
    if let Some(node) = quorum {
        node.shutdown().await;
    }
    let closing = Arc::clone(&broker);
    tokio::task::spawn_blocking(move || closing.shutdown())
        .await
        .context("broker shutdown task failed")?
        .context("broker did not shut down cleanly")?;
    info!(
        wait_ms = waited.elapsed().as_millis() as u64,
        "broker stopped"
    );
    Ok(())
}

/// How the broker opens: alone, or as a node of a cluster on a data
/// directory already locked (its quorum runs in it).
enum Opening {
    Alone(BrokerOptions),
    Clustered(BrokerOptions, DataDirLock),
}

/// With `cluster.voters` set: locks the data directory, starts this
/// node's metadata quorum member on `cluster.listen` (state in
/// `<data_dir>/cluster`), and hands the broker the metadata it applies to.
/// Connections the inter-node listener hands to the Kafka front-end.
type ReplicaStreams = tokio::sync::mpsc::Receiver<(sluice_tls::LinkStream, std::net::SocketAddr)>;

async fn join_cluster(
    config: &Config,
    mut options: BrokerOptions,
) -> anyhow::Result<(
    Opening,
    Option<Arc<MetadataNode>>,
    Option<ReplicaStreams>,
    Option<ReplicaStreams>,
)> {
    let voters = config
        .cluster
        .voter_list()
        .map_err(|reason| anyhow::anyhow!(reason))?;
    if voters.is_empty() {
        return Ok((Opening::Alone(options), None, None, None));
    }
    let voter_count = voters.len();
    let routes = config
        .cluster
        .route_list()
        .map_err(|reason| anyhow::anyhow!(reason))?;
    // Followers' replica fetches arrive on the inter-node listener and
    // are served as Kafka connections once the front-end runs.
    let (kafka_streams, replica_streams) = tokio::sync::mpsc::channel(64);
    let (message_senders, message_streams) = tokio::sync::mpsc::channel(64);
    let data_dir = config.data_dir.clone();
    let lock = tokio::task::spawn_blocking(move || DataDirLock::acquire(&data_dir))
        .await
        .context("data directory lock task failed")??;
    let (listener, bound) = bind(&config.cluster.listen, "cluster", "cluster.listen").await?;
    let metadata = Metadata::for_quorum(config.node.id);
    let node = MetadataNode::start_linked(
        u64::try_from(config.node.id).context("node.id")?,
        listener,
        &voters.into_iter().collect(),
        &config.data_dir.join("cluster"),
        Box::new(CoreMachine(MetadataMachine::new(Arc::clone(&metadata)))),
        RaftSettings::default(),
        sluice_cluster::Links {
            routes: routes.into_iter().collect(),
            kafka: Some(kafka_streams),
            messages: Some(message_senders),
            address: bound.to_string(),
        },
    )
    .await
    .context("cannot start the metadata quorum")?;
    let node = Arc::new(node);
    metadata.attach_quorum(Arc::new(ClusterQuorum::new(
        Arc::clone(&node),
        tokio::runtime::Handle::current(),
    )));
    info!(listen = %bound, node = config.node.id, "cluster listening");
    options.quorum_metadata = Some(metadata);
    // Kafka's offsets.topic.replication.factor (3), at most the voters.
    options.offsets_replication = u16::try_from(voter_count.min(3)).unwrap_or(3);
    options.default_replication = config
        .kafka
        .default_replication_factor
        .min(u16::try_from(voter_count).unwrap_or(u16::MAX));
    Ok((
        Opening::Clustered(options, lock),
        Some(node),
        Some(replica_streams),
        Some(message_streams),
    ))
}

/// Longest time connections get to finish after the listeners stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds a listener; errors name the protocol and the config key.
async fn bind(
    address: &str,
    protocol: &str,
    key: &str,
) -> anyhow::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for {protocol} on {address} ({key})"))?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("{protocol} listener address"))?;
    Ok((listener, bound))
}

/// The TLS configuration of `[tls]`, when a listener asks for TLS; it
/// reloads on change and SIGHUP for as long as the lifecycle runs.
fn load_tls(config: &Config, lifecycle: &mut Lifecycle) -> anyhow::Result<Option<Arc<Tls>>> {
    let tls = &config.tls;
    if tls.cert_file.is_empty() {
        return Ok(None);
    }
    let settings = TlsSettings {
        cert_file: tls.cert_file.clone().into(),
        key_file: tls.key_file.clone().into(),
        ca_file: (!tls.ca_file.is_empty()).then(|| tls.ca_file.clone().into()),
        // Validated by the configuration.
        client_auth: ClientAuth::parse(&tls.client_auth).unwrap_or(ClientAuth::None),
        reload_interval: tls.reload_interval.get(),
    };
    let loaded = Tls::load(settings).context("cannot load the TLS certificate ([tls])")?;
    let stopping = lifecycle.stopping();
    lifecycle.serve(Arc::clone(&loaded).watch(stopping));
    Ok(Some(loaded))
}

/// With `cluster.tls`: mutual TLS for every inter-node connection of
/// this process, set before the quorum dials anyone; its server side
/// reloads with the other listeners' files once the lifecycle runs.
fn link_tls(config: &Config) -> anyhow::Result<Option<Arc<sluice_tls::LinkTls>>> {
    if !config.cluster.tls {
        return Ok(None);
    }
    let tls = &config.tls;
    let settings = TlsSettings {
        cert_file: tls.cert_file.clone().into(),
        key_file: tls.key_file.clone().into(),
        ca_file: Some(config.cluster.tls_ca_file.clone().into()),
        client_auth: ClientAuth::Required,
        reload_interval: tls.reload_interval.get(),
    };
    let link = sluice_tls::LinkTls::load(settings)
        .context("cannot load the TLS certificate for cluster.tls ([tls])")?;
    sluice_cluster::link::use_tls(Arc::clone(&link));
    tracing::info!("connections between nodes use mutual TLS");
    Ok(Some(link))
}

/// `host:port` split, or the error naming `key`.
fn host_port(address: &str, key: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("{key}: {address:?} is not HOST:PORT"))?;
    Ok((
        host.to_owned(),
        port.parse().with_context(|| format!("{key} port"))?,
    ))
}

/// Where the Kafka listeners are: the main one (its bound address and
/// advertised host and port) and every listener's advertised address by
/// name, for the cluster's registration.
struct KafkaListeners {
    bound: std::net::SocketAddr,
    host: String,
    port: u16,
    advertised: std::collections::BTreeMap<String, String>,
    /// Every listener's name and bound address, for the log and overview.
    all: Vec<(String, std::net::SocketAddr)>,
}

/// Binds the Kafka listeners (`kafka.listen`, then `kafka.listeners`)
/// and serves each in a task, and the replica connections the inter-node
/// listener hands over.
async fn start_kafka(
    config: &KafkaConfig,
    tls: Option<&Arc<Tls>>,
    broker: Arc<Broker>,
    replica_streams: Option<ReplicaStreams>,
    lifecycle: &mut Lifecycle,
) -> anyhow::Result<KafkaListeners> {
    let mechanisms: Vec<String> = split_list(&config.sasl_mechanisms)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let sasl = SaslOptions {
        mechanisms: if mechanisms.is_empty() {
            SaslOptions::default().mechanisms
        } else {
            mechanisms
        },
        reauth: Some(config.connections_max_reauth.get()).filter(|d| !d.is_zero()),
    };
    let advertised_extra: std::collections::BTreeMap<String, String> = config
        .advertised_listener_list()
        .map_err(|reason| anyhow::anyhow!(reason))?
        .into_iter()
        .collect();
    // Validated by the configuration.
    let main_protocol =
        SecurityProtocol::parse(&config.security_protocol).unwrap_or(SecurityProtocol::Plaintext);
    // What every listener shares; as it stands, the options of other
    // nodes' connections on the inter-node link (no SASL, no TLS of the
    // client listeners), which each listener overrides below.
    let base = KafkaOptions {
        advertised_host: String::new(),
        advertised_port: 0,
        node_id: broker.node_id(),
        max_request_bytes: usize::try_from(config.max_request_bytes.bytes()).unwrap_or(usize::MAX),
        listener_name: main_protocol.name().to_owned(),
        protocol: SecurityProtocol::Plaintext,
        sasl,
        tls: None,
        principal_rules: sluice_kafka::PrincipalRules::parse(&config.ssl_principal_mapping_rules)
            .map_err(|reason| {
            anyhow::anyhow!("kafka.ssl_principal_mapping_rules is refused: {reason}")
        })?,
        authorizer: config.acls.then(|| {
            Arc::new(sluice_kafka::AuthorizerOptions {
                super_users: config
                    .super_user_list()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                everyone_if_none: config.allow_everyone_if_no_acl_found,
            })
        }),
    };
    let mut specs = vec![(
        main_protocol,
        config.listen.as_str().to_owned(),
        config.advertised.clone(),
        "kafka.listen",
    )];
    for (protocol, address) in config
        .listener_list()
        .map_err(|reason| anyhow::anyhow!(reason))?
    {
        let advertised = advertised_extra.get(&protocol).cloned().unwrap_or_default();
        let protocol = SecurityProtocol::parse(&protocol).unwrap_or(SecurityProtocol::Plaintext);
        specs.push((protocol, address, advertised, "kafka.listeners"));
    }
    let mut listeners: Option<KafkaListeners> = None;
    for (protocol, address, advertised, key) in specs {
        let (listener, bound) = bind(&address, "Kafka", key).await?;
        let (advertised_host, advertised_port) = if advertised.is_empty() {
            let host = address
                .rsplit_once(':')
                .map_or_else(|| bound.ip().to_string(), |(host, _)| host.to_owned());
            (host, bound.port())
        } else {
            host_port(&advertised, key)?
        };
        let name = protocol.name().to_owned();
        if protocol.tls() && tls.is_none() {
            anyhow::bail!(
                "the Kafka listener {name} asks for TLS: set tls.cert_file and tls.key_file"
            );
        }
        info!(listener = %name, listen = %bound, advertised = %format!("{advertised_host}:{advertised_port}"), "kafka listening");
        let options = KafkaOptions {
            advertised_host: advertised_host.clone(),
            advertised_port,
            listener_name: name.clone(),
            protocol,
            tls: tls.filter(|_| protocol.tls()).cloned(),
            ..base.clone()
        };
        let entry = listeners.get_or_insert_with(|| KafkaListeners {
            bound,
            host: advertised_host.clone(),
            port: advertised_port,
            advertised: std::collections::BTreeMap::new(),
            all: Vec::new(),
        });
        entry
            .advertised
            .insert(name.clone(), format!("{advertised_host}:{advertised_port}"));
        entry.all.push((name, bound));
        let stopping = lifecycle.stopping();
        lifecycle.serve(sluice_kafka::serve(
            listener,
            Arc::clone(&broker),
            options,
            stopping,
        ));
    }
    let listeners = listeners.context("no Kafka listener")?;
    if let Some(streams) = replica_streams {
        // Other nodes' connections arrive on the inter-node link: no SASL,
        // no TLS of the client listeners.
        let options = KafkaOptions {
            advertised_host: listeners.host.clone(),
            advertised_port: listeners.port,
            ..base
        };
        let stopping = lifecycle.stopping();
        lifecycle.serve(sluice_kafka::serve_streams(
            streams, broker, options, stopping,
        ));
    }
    Ok(listeners)
}

/// The configuration's users (`amqp.users`, `amqp.loopback_users`),
/// hashed: the bootstrap of the broker's users, taken on a data
/// directory's first start. They are administrators, as RabbitMQ's
/// default user is.
fn users(config: &AmqpConfig) -> std::collections::BTreeMap<String, UserRecord> {
    let loopback_only = split_list(&config.loopback_users);
    split_list(&config.users)
        .into_iter()
        .filter_map(|entry| entry.split_once(':'))
        .map(|(name, password)| {
            let user = UserRecord::with_password(
                password,
                vec!["administrator".to_owned()],
                loopback_only.contains(&name),
            );
            (name.to_owned(), user)
        })
        .collect()
}

/// Binds a protocol's TLS listener when `listen` is set (`key` names the
/// setting; TLS must be configured) and serves it in a task with
/// `serve(listener, tls, stopping)`; the address bound.
///
/// # Errors
/// `key` set without `[tls]`, or a failed bind.
async fn serve_tls<F, Fut>(
    listen: &str,
    tls: Option<&Arc<Tls>>,
    name: &str,
    key: &str,
    lifecycle: &mut Lifecycle,
    serve: F,
) -> anyhow::Result<Option<std::net::SocketAddr>>
where
    F: FnOnce(tokio::net::TcpListener, Arc<Tls>, tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if listen.is_empty() {
        return Ok(None);
    }
    let tls = tls
        .cloned()
        .with_context(|| format!("{key} asks for TLS: set tls.cert_file and tls.key_file"))?;
    let (listener, bound) = bind(listen, name, key).await?;
    info!(listen = %bound, "{} listening", name.to_lowercase());
    let stopping = lifecycle.stopping();
    lifecycle.serve(serve(listener, tls, stopping));
    Ok(Some(bound))
}

/// Binds the AMQP listener, and the AMQPS one when `amqp.tls_listen` is
/// set, and serves each in a task.
async fn start_amqp(
    whole: &Config,
    tls: Option<&Arc<Tls>>,
    broker: Arc<Broker>,
    lifecycle: &mut Lifecycle,
) -> anyhow::Result<(std::net::SocketAddr, Option<std::net::SocketAddr>)> {
    let config = &whole.amqp;
    let (listener, bound) = bind(config.listen.as_str(), "AMQP", "amqp.listen").await?;
    info!(listen = %bound, "amqp listening");
    let options = sluice_amqp::AmqpOptions {
        frame_max: u32::try_from(config.frame_max.bytes()).unwrap_or(u32::MAX),
        channel_max: config.channel_max,
        heartbeat: u16::try_from(config.heartbeat.get().as_secs()).unwrap_or(u16::MAX),
        mechanisms: split_list(&config.auth_mechanisms)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        cert_login_from: if config.ssl_cert_login_from == "common_name" {
            sluice_amqp::CertLoginFrom::CommonName
        } else {
            sluice_amqp::CertLoginFrom::DistinguishedName
        },
        // The bridge's paths into and out of topics follow the Kafka ACLs.
        kafka_acls: whole.kafka.acls.then(|| sluice_amqp::KafkaAcls {
            super_users: whole
                .kafka
                .super_user_list()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            everyone_if_none: whole.kafka.allow_everyone_if_no_acl_found,
        }),
    };
    let secure = serve_tls(
        &config.tls_listen,
        tls,
        "AMQPS",
        "amqp.tls_listen",
        lifecycle,
        {
            let (broker, options) = (Arc::clone(&broker), options.clone());
            move |listener, tls, stopping| {
                sluice_amqp::serve(listener, broker, options, Some(tls), stopping)
            }
        },
    )
    .await?;
    let stopping = lifecycle.stopping();
    lifecycle.serve(sluice_amqp::serve(
        listener, broker, options, None, stopping,
    ));
    Ok((bound, secure))
}

/// Binds the MQTT listener, and the MQTTS one when `mqtt.tls_listen` is
/// set, and serves each in a task.
async fn start_mqtt(
    whole: &Config,
    tls: Option<&Arc<Tls>>,
    broker: Arc<Broker>,
    lifecycle: &mut Lifecycle,
) -> anyhow::Result<(
    std::net::SocketAddr,
    Option<std::net::SocketAddr>,
    sluice_http::WebSocketRoute,
)> {
    let config = &whole.mqtt;
    let (listener, bound) = bind(config.listen.as_str(), "MQTT", "mqtt.listen").await?;
    info!(listen = %bound, "mqtt listening");
    let options = sluice_mqtt::MqttOptions {
        vhost: config.vhost.clone(),
        exchange: config.exchange.clone(),
        allow_anonymous: config.allow_anonymous,
        default_user: config.default_user.clone(),
        default_pass: config.default_pass.clone(),
        max_session_expiry_secs: u32::try_from(config.max_session_expiry.get().as_secs())
            .unwrap_or(u32::MAX),
        prefetch: config.prefetch,
        max_packet_size: u32::try_from(config.max_packet_size.bytes()).unwrap_or(u32::MAX),
        durable_queue_type: config.durable_queue_type.clone(),
        topic_alias_max: config.topic_alias_max,
    };
    let node = sluice_mqtt::MqttNode::new(options);
    // Client ids are the cluster's: a client taking one on another node
    // ends its holder here.
    node.attach(&broker);
    let secure = serve_tls(
        &config.tls_listen,
        tls,
        "MQTTS",
        "mqtt.tls_listen",
        lifecycle,
        {
            let (broker, node) = (Arc::clone(&broker), node.clone());
            move |listener, tls, stopping| {
                sluice_mqtt::serve(listener, broker, node, Some(tls), stopping)
            }
        },
    )
    .await?;
    // MQTT over WebSocket on the HTTP listener (RabbitMQ's Web MQTT).
    let websocket = {
        let node = node.clone();
        let broker = Arc::clone(&broker);
        let stopping = lifecycle.stopping();
        sluice_http::WebSocketRoute {
            path: "/ws/mqtt",
            subprotocols: vec!["mqtt", "mqttv3.1"],
            text: false,
            handler: Arc::new(move |halves, peer| {
                let node = node.clone();
                let broker = Arc::clone(&broker);
                let stopping = stopping.clone();
                Box::pin(async move { node.serve_stream(broker, halves, peer, stopping).await })
            }),
        }
    };
    let stopping = lifecycle.stopping();
    lifecycle.serve(sluice_mqtt::serve(listener, broker, node, None, stopping));
    Ok((bound, secure, websocket))
}

/// Binds the STOMP listener, and the TLS one when `stomp.tls_listen` is
/// set, and serves each in a task.
async fn start_stomp(
    whole: &Config,
    tls: Option<&Arc<Tls>>,
    broker: Arc<Broker>,
    lifecycle: &mut Lifecycle,
) -> anyhow::Result<(
    std::net::SocketAddr,
    Option<std::net::SocketAddr>,
    sluice_http::WebSocketRoute,
)> {
    let config = &whole.stomp;
    let (listener, bound) = bind(config.listen.as_str(), "STOMP", "stomp.listen").await?;
    info!(listen = %bound, "stomp listening");
    let options = sluice_stomp::StompOptions {
        vhost: config.vhost.clone(),
        allow_anonymous: config.allow_anonymous,
        default_user: config.default_user.clone(),
        default_pass: config.default_pass.clone(),
        heartbeat: config.heartbeat.get(),
        max_header_bytes: 64 * 1024,
        max_body_bytes: usize::try_from(config.max_frame_size.bytes()).unwrap_or(usize::MAX),
    };
    let secure = serve_tls(
        &config.tls_listen,
        tls,
        "STOMPS",
        "stomp.tls_listen",
        lifecycle,
        {
            let (broker, options) = (Arc::clone(&broker), options.clone());
            move |listener, tls, stopping| {
                sluice_stomp::serve(listener, broker, options, Some(tls), stopping)
            }
        },
    )
    .await?;
    // STOMP over WebSocket on the HTTP listener (RabbitMQ's Web STOMP).
    let websocket = {
        let options = Arc::new(options.clone());
        let broker = Arc::clone(&broker);
        let stopping = lifecycle.stopping();
        sluice_http::WebSocketRoute {
            path: "/ws/stomp",
            subprotocols: vec!["v12.stomp", "v11.stomp", "v10.stomp", "stomp"],
            text: true,
            handler: Arc::new(move |halves, peer| {
                let options = Arc::clone(&options);
                let broker = Arc::clone(&broker);
                let stopping = stopping.clone();
                Box::pin(sluice_stomp::serve_stream(
                    broker, options, halves, peer, stopping,
                ))
            }),
        }
    };
    let stopping = lifecycle.stopping();
    lifecycle.serve(sluice_stomp::serve(
        listener, broker, options, None, stopping,
    ));
    Ok((bound, secure, websocket))
}

/// Installs the global subscriber: filter from `SLUICE_LOG`, else `RUST_LOG`,
/// else `info` (openraft at `warn` unless the filter names it); output to
/// stderr as text or JSON.
fn init_tracing(format: LogFormat) -> anyhow::Result<()> {
    let (variable, directives) = ["SLUICE_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|name| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
                .map(|value| (name, value))
        })
        .unwrap_or(("the default", "info".to_owned()));
    // openraft narrates every vote and replication step at INFO; its
    // warnings are what an operator needs, unless a filter names it.
    let directives = if directives.contains("openraft") {
        directives
    } else {
        format!("{directives},openraft=warn")
    };
    let filter = EnvFilter::try_new(&directives)
        .with_context(|| format!("invalid log filter {directives:?} in {variable}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|err| anyhow::anyhow!(err))
    .context("cannot install the log subscriber")
}

/// `[log]` as the storage engine's settings.
fn log_config(settings: &LogSettings) -> anyhow::Result<LogConfig> {
    Ok(LogConfig {
        segment_bytes: settings.segment_bytes.bytes(),
        segment_time: settings.segment_time.get(),
        index_interval_bytes: u32::try_from(settings.index_interval_bytes.bytes())
            .context("log.index_interval_bytes must be below 4GiB")?,
        retention_bytes: settings.retention_bytes.map(|bytes| bytes.bytes()),
        retention_time: settings.retention_time.map(|time| time.get()),
        durability: match settings.durability {
            DurabilityMode::Always => Durability::Always,
            DurabilityMode::Interval => Durability::Interval(settings.flush_interval.get()),
            DurabilityMode::Never => Durability::Never,
        },
        max_batch_bytes: u32::try_from(settings.max_batch_bytes.bytes())
            .context("log.max_batch_bytes must be below 4GiB")?,
        // Cleanup policy and compaction are per topic (cleanup.policy, …).
        ..LogConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_config::{ByteSize, HumanDuration};

    use super::*;

    #[test]
    fn default_log_settings_match_the_engine_defaults() -> anyhow::Result<()> {
        assert_eq!(log_config(&LogSettings::default())?, LogConfig::default());
        Ok(())
    }

    #[test]
    fn interval_durability_takes_the_flush_interval() -> anyhow::Result<()> {
        let settings = LogSettings {
            durability: DurabilityMode::Interval,
            flush_interval: HumanDuration::new(Duration::from_millis(250)),
            retention_bytes: Some(ByteSize::mib(5)),
            retention_time: None,
            ..LogSettings::default()
        };
        let config = log_config(&settings)?;
        assert_eq!(
            config.durability,
            Durability::Interval(Duration::from_millis(250))
        );
        assert_eq!(config.retention_bytes, Some(5 << 20));
        assert_eq!(config.retention_time, None);
        Ok(())
    }
}
