//! The typed configuration tree and its defaults.
//!
//! Adding a key: add the field (with its default), a line in [`KEYS`], a
//! commented line in `config/sluice.example.toml`, and a check in
//! [`Config::validate`] if some values make no sense. Tests fail until the
//! three agree.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::units::{ByteSize, HumanDuration, or_none};

/// Every setting of a Sluice node. `Config::default()` runs a single node on
/// 127.0.0.1 with data under `./data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding everything the broker stores, and its lock file.
    pub data_dir: PathBuf,
    /// This node's identity.
    pub node: NodeConfig,
    /// Clustering: the metadata quorum and the links between nodes.
    pub cluster: ClusterConfig,
    /// Kafka front-end.
    pub kafka: KafkaConfig,
    /// AMQP 0-9-1 front-end.
    pub amqp: AmqpConfig,
    /// MQTT 3.1, 3.1.1 and 5.0 clients.
    pub mqtt: MqttConfig,
    /// STOMP 1.0, 1.1 and 1.2 clients.
    pub stomp: StompConfig,
    /// Admin API, web UI and metrics.
    pub http: HttpConfig,
    /// Process log output.
    pub logging: LoggingConfig,
    /// Defaults for every log (Kafka partitions, durable queues).
    pub log: LogSettings,
    /// Caps on connections, topics and queues.
    pub limits: LimitsConfig,
    /// The certificate and key of every TLS listener.
    pub tls: TlsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            node: NodeConfig::default(),
            cluster: ClusterConfig::default(),
            kafka: KafkaConfig::default(),
            amqp: AmqpConfig::default(),
            mqtt: MqttConfig::default(),
            stomp: StompConfig::default(),
            http: HttpConfig::default(),
            logging: LoggingConfig::default(),
            log: LogSettings::default(),
            limits: LimitsConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// `[tls]`: the certificate, key and client CA of every TLS listener
/// (Kafka `SSL` and `SASL_SSL` listeners, `amqp.tls_listen`, `http.tls`).
/// The files are PEM, read again when they change (checked every
/// `reload_interval`) and on SIGHUP, without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// PEM CA certificates that client certificates must chain to.
    pub ca_file: String,
    /// Client certificates: `none`, `optional` (checked when sent) or
    /// `required` (mTLS).
    pub client_auth: String,
    /// How often the files are checked for changes.
    pub reload_interval: HumanDuration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: String::new(),
            key_file: String::new(),
            ca_file: String::new(),
            client_auth: "none".to_owned(),
            reload_interval: HumanDuration::from_secs(10),
        }
    }
}

/// `[node]`: who this node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Kafka's `node.id`: the broker id clients see in Metadata, and this
    /// node's id in a cluster.
    pub id: i32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { id: 1 }
    }
}

/// `[cluster]`: how this node reaches the others. Empty `voters` is a
/// cluster of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// HOST:PORT this node's inter-node listener binds (the metadata
    /// quorum's traffic); required with `voters`.
    pub listen: String,
    /// The initial controller quorum, `id@host:port` separated by commas,
    /// the same on every node; a voter is named at its `listen` address.
    /// A node it does not name joins the cluster through the voters, as a
    /// node that holds replicas but does not vote (it announces its
    /// `listen` address). Read on a node's first start only.
    pub voters: String,
    /// Where this node dials some peers' inter-node listeners instead of
    /// their `voters` address (through a proxy or a NAT, say),
    /// `id@host:port` separated by commas; empty dials the voters'
    /// addresses.
    pub routes: String,
    /// A follower that has not caught up with its leader for this long
    /// leaves the in-sync replicas (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag_max: HumanDuration,
    /// A node the controller has not heard from for this long is dead:
    /// its partitions get new leaders (Kafka's
    /// `broker.session.timeout.ms`, 9 s there).
    pub session_timeout: HumanDuration,
    /// Whether every connection between nodes (`cluster.listen`) is
    /// mutual TLS with `[tls]`'s certificate and key; the certificate
    /// needs the clientAuth and serverAuth usages and must name each
    /// node's address.
    pub tls: bool,
    /// PEM CA certificates node certificates must chain to (required with
    /// `tls`): a CA that signs nodes only, since any certificate it signed
    /// passes for a node.
    pub tls_ca_file: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: String::new(),
            voters: String::new(),
            routes: String::new(),
            replica_lag_max: HumanDuration::from_secs(30),
            session_timeout: HumanDuration::new(std::time::Duration::from_millis(1500)),
            tls: false,
            tls_ca_file: String::new(),
        }
    }
}

impl ClusterConfig {
    /// The voters as (id, address), or why they cannot be read.
    ///
    /// # Errors
    /// An entry that is not `id@host:port`, or an id named twice.
    pub fn voter_list(&self) -> Result<Vec<(u64, String)>, String> {
        node_addresses("cluster.voters", &self.voters)
    }

    /// The routes as (id, address), or why they cannot be read.
    ///
    /// # Errors
    /// As [`ClusterConfig::voter_list`].
    pub fn route_list(&self) -> Result<Vec<(u64, String)>, String> {
        node_addresses("cluster.routes", &self.routes)
    }
}

/// A list of `id@host:port`, each id once; `key` names it in errors.
fn node_addresses(key: &str, list: &str) -> Result<Vec<(u64, String)>, String> {
    {
        let mut voters: Vec<(u64, String)> = Vec::new();
        for entry in split_list(list) {
            let parsed = entry.split_once('@').and_then(|(id, address)| {
                let id = id.trim().parse::<u64>().ok()?;
                let (host, port) = address.trim().rsplit_once(':')?;
                (!host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
                    .then(|| (id, address.trim().to_owned()))
            });
            let Some((id, address)) = parsed else {
                return Err(format!("{key} entries are id@host:port, got {entry:?}"));
            };
            if voters.iter().any(|(known, _)| *known == id) {
                return Err(format!("{key} names node {id} twice"));
            }
            voters.push((id, address));
        }
        Ok(voters)
    }
}

/// `[kafka]`: the Kafka protocol listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Address the Kafka listener binds.
    pub listen: ListenAddr,
    /// HOST:PORT Metadata tells clients to connect to; empty means the
    /// listen address (with the port actually bound).
    pub advertised: String,
    /// How clients of `listen` connect (Kafka's `security.protocol`):
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    pub security_protocol: String,
    /// More listeners beside `listen`, as `PROTOCOL://HOST:PORT`,
    /// comma-separated (Kafka's `listeners`, each named by its protocol).
    pub listeners: String,
    /// Where clients reach the extra listeners, `PROTOCOL://HOST:PORT`,
    /// comma-separated; a listener left out advertises its bound address.
    pub advertised_listeners: String,
    /// SASL mechanisms clients may use (Kafka's
    /// `sasl.enabled.mechanisms`): `PLAIN`, `SCRAM-SHA-256`,
    /// `SCRAM-SHA-512`; empty: all three.
    pub sasl_mechanisms: String,
    /// How long a SASL authentication holds before the client must
    /// re-authenticate on its connection (Kafka's
    /// `connections.max.reauth.ms`, KIP-368); 0s: for ever.
    pub connections_max_reauth: HumanDuration,
    /// Whether Kafka requests are authorized by ACLs (Kafka's
    /// StandardAuthorizer): CreateAcls, DescribeAcls and DeleteAcls
    /// manage them, and every API checks them.
    pub acls: bool,
    /// Principals that pass every ACL check, `User:NAME`,
    /// semicolon-separated (Kafka's `super.users`).
    pub super_users: String,
    /// Whether a resource no ACL names is open to everyone (Kafka's
    /// `allow.everyone.if.no.acl.found`); off by default.
    pub allow_everyone_if_no_acl_found: bool,
    /// How the certificate of a client on an `SSL` listener names its
    /// principal (Kafka's `ssl.principal.mapping.rules`): `DEFAULT` (the
    /// distinguished name) and `RULE:pattern/replacement/[LU]`, tried in
    /// order.
    pub ssl_principal_mapping_rules: String,
    /// Requests larger than this close the connection before any allocation.
    pub max_request_bytes: ByteSize,
    /// Whether Metadata and Produce for an unknown topic create it.
    pub auto_create_topics: bool,
    /// Partition count of topics created automatically or with -1 partitions.
    pub default_partitions: u32,
    /// Replicas of each partition of a topic created without a replication
    /// factor on a cluster (automatically, with -1, through the admin API
    /// or as an AMQP stream), at most the number of voters (Kafka's
    /// `default.replication.factor`, 1 there).
    pub default_replication_factor: u16,
    /// Committed offsets of a group with no members and no commit for this
    /// long are forgotten (Kafka's `offsets.retention.minutes`).
    pub offsets_retention: HumanDuration,
    /// Segment size of the committed-offsets log, which is compacted
    /// (Kafka's `offsets.topic.segment.bytes`).
    pub offsets_segment_bytes: ByteSize,
    /// Partitions of the committed offsets topic of a cluster (Kafka's
    /// `offsets.topic.num.partitions`); read when the topic is created.
    pub offsets_partitions: u32,
    /// Partitions of the transactions' states topic of a cluster (Kafka's
    /// `transaction.state.log.num.partitions`); read when the topic is
    /// created.
    pub transaction_state_partitions: u32,
    /// Shortest session timeout a consumer group member may ask for
    /// (Kafka's `group.min.session.timeout.ms`).
    pub group_min_session_timeout: HumanDuration,
    /// Longest session timeout a consumer group member may ask for
    /// (Kafka's `group.max.session.timeout.ms`).
    pub group_max_session_timeout: HumanDuration,
    /// How long the first join of an empty group waits for more members
    /// (Kafka's `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay: HumanDuration,
    /// A member of a consumer group of the new protocol (KIP-848) not heard
    /// from for this long is fenced (Kafka's
    /// `group.consumer.session.timeout.ms`).
    pub group_consumer_session_timeout: HumanDuration,
    /// How often members of a consumer group of the new protocol
    /// heartbeat (Kafka's `group.consumer.heartbeat.interval.ms`).
    pub group_consumer_heartbeat_interval: HumanDuration,
    /// The server-side assignors of the new protocol, comma-separated, the
    /// first the default (Kafka's `group.consumer.assignors`): `uniform`
    /// and `range`.
    pub group_consumer_assignors: String,
    /// Most members of one consumer group of the new protocol; a join
    /// beyond gets GROUP_MAX_SIZE_REACHED (Kafka's
    /// `group.consumer.max.size`).
    pub group_consumer_max_size: u32,
    /// Which online migrations between classic groups and consumer groups
    /// of the new protocol happen (Kafka's
    /// `group.consumer.migration.policy`): `bidirectional`, `upgrade`,
    /// `downgrade` or `disabled`.
    pub group_migration_policy: String,
    /// A share group member not heard from for this long leaves (Kafka's
    /// `group.share.session.timeout.ms`).
    pub group_share_session_timeout: HumanDuration,
    /// How often share group members heartbeat (Kafka's
    /// `group.share.heartbeat.interval.ms`).
    pub group_share_heartbeat_interval: HumanDuration,
    /// How long a record fetched by a share group member stays acquired
    /// (Kafka's `group.share.record.lock.duration.ms`).
    pub group_share_record_lock_duration: HumanDuration,
    /// Deliveries of a record to share group members before it is
    /// archived (Kafka's `group.share.delivery.count.limit`).
    pub group_share_delivery_count_limit: u16,
    /// Most records in flight per share partition (Kafka's
    /// `group.share.partition.max.record.locks`).
    pub group_share_max_record_locks: u32,
    /// Where a share partition starts the first time a member fetches it:
    /// `latest` or `earliest` (Kafka's `share.auto.offset.reset` group
    /// config, here for every share group).
    pub share_auto_offset_reset: String,
    /// The longest transaction timeout a transactional producer may ask
    /// for (Kafka's `transaction.max.timeout.ms`); longer ones get
    /// INVALID_TRANSACTION_TIMEOUT.
    pub transaction_max_timeout: HumanDuration,
    /// A transactional id with no transaction open and no use for this
    /// long is forgotten (Kafka's `transactional.id.expiration.ms`).
    pub transactional_id_expiration: HumanDuration,
}

/// Kafka's security protocols, by name.
const SECURITY_PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

/// `PROTOCOL://HOST:PORT,...` as (protocol, host:port) pairs.
fn protocol_addresses(text: &str, key: &str) -> Result<Vec<(String, String)>, String> {
    let mut seen = Vec::new();
    for entry in split_list(text) {
        let Some((protocol, address)) = entry.split_once("://") else {
            return Err(format!(
                "{key} entries are PROTOCOL://HOST:PORT, got {entry:?}"
            ));
        };
        let protocol = protocol.to_ascii_uppercase();
        if !SECURITY_PROTOCOLS.contains(&protocol.as_str()) {
            return Err(format!(
                "{key}: {protocol:?} is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
            ));
        }
        if address
            .rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            return Err(format!("{key}: {address:?} is not HOST:PORT"));
        }
        if seen.iter().any(|(p, _)| *p == protocol) {
            return Err(format!("{key} names {protocol} twice"));
        }
        seen.push((protocol, address.to_owned()));
    }
    Ok(seen)
}

impl KafkaConfig {
    /// The extra listeners, (protocol, host:port).
    ///
    /// # Errors
    /// An entry that is not `PROTOCOL://HOST:PORT`, a protocol named twice
    /// or also `security_protocol`'s.
    pub fn listener_list(&self) -> Result<Vec<(String, String)>, String> {
        let listeners = protocol_addresses(&self.listeners, "kafka.listeners")?;
        if listeners
            .iter()
            .any(|(p, _)| p.eq_ignore_ascii_case(&self.security_protocol))
        {
            return Err(format!(
                "kafka.listeners names {}, the protocol of kafka.listen (kafka.security_protocol)",
                self.security_protocol
            ));
        }
        Ok(listeners)
    }

    /// Where clients reach the extra listeners, (protocol, host:port).
    ///
    /// # Errors
    /// As [`KafkaConfig::listener_list`].
    pub fn advertised_listener_list(&self) -> Result<Vec<(String, String)>, String> {
        protocol_addresses(&self.advertised_listeners, "kafka.advertised_listeners")
    }

    /// Whether `listen` speaks TLS.
    pub fn tls_protocol(&self) -> bool {
        self.security_protocol.eq_ignore_ascii_case("SSL")
            || self.security_protocol.eq_ignore_ascii_case("SASL_SSL")
    }
}

impl KafkaConfig {
    /// The super users' principals.
    pub fn super_user_list(&self) -> Vec<&str> {
        self.super_users
            .split(';')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .collect()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            listen: ListenAddr::loopback(9092),
            advertised: String::new(),
            security_protocol: "PLAINTEXT".to_owned(),
            listeners: String::new(),
            advertised_listeners: String::new(),
            sasl_mechanisms: String::new(),
            connections_max_reauth: HumanDuration::from_secs(0),
            acls: false,
            super_users: String::new(),
            allow_everyone_if_no_acl_found: false,
            ssl_principal_mapping_rules: "DEFAULT".to_owned(),
            max_request_bytes: ByteSize::mib(100),
            auto_create_topics: true,
            default_partitions: 1,
            default_replication_factor: 3,
            offsets_retention: HumanDuration::new(std::time::Duration::from_secs(7 * 24 * 3600)),
            offsets_segment_bytes: ByteSize::mib(100),
            offsets_partitions: 50,
            transaction_state_partitions: 50,
            group_min_session_timeout: HumanDuration::from_secs(6),
            group_max_session_timeout: HumanDuration::from_secs(30 * 60),
            group_initial_rebalance_delay: HumanDuration::from_secs(3),
            group_consumer_session_timeout: HumanDuration::from_secs(45),
            group_consumer_heartbeat_interval: HumanDuration::from_secs(5),
            group_consumer_assignors: "uniform,range".to_owned(),
            group_consumer_max_size: MAX_GROUP_SIZE,
            group_migration_policy: "bidirectional".to_owned(),
            group_share_session_timeout: HumanDuration::from_secs(45),
            group_share_heartbeat_interval: HumanDuration::from_secs(5),
            group_share_record_lock_duration: HumanDuration::from_secs(30),
            group_share_delivery_count_limit: 5,
            group_share_max_record_locks: 2000,
            share_auto_offset_reset: "latest".to_owned(),
            transaction_max_timeout: HumanDuration::from_secs(15 * 60),
            transactional_id_expiration: HumanDuration::from_secs(7 * 24 * 3600),
        }
    }
}

/// `[amqp]`: the AMQP 0-9-1 listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// Address the AMQP listener binds.
    pub listen: ListenAddr,
    /// HOST:PORT of the AMQPS (TLS) listener (5671 by convention); empty:
    /// none.
    pub tls_listen: String,
    /// SASL mechanisms offered to AMQP clients, comma-separated (RabbitMQ's
    /// `auth_mechanisms`): `PLAIN`, `AMQPLAIN`, and `EXTERNAL` (a client
    /// certificate names the user; offered to AMQPS clients that sent one).
    pub auth_mechanisms: String,
    /// What names the user of an EXTERNAL login (RabbitMQ's
    /// `ssl_cert_login_from`): the client certificate's
    /// `distinguished_name` or its `common_name`.
    pub ssl_cert_login_from: String,
    /// Heartbeat interval proposed in `connection.tune` (0s: none).
    pub heartbeat: HumanDuration,
    /// Largest frame proposed in `connection.tune`.
    pub frame_max: ByteSize,
    /// Most channels per connection proposed in `connection.tune`.
    pub channel_max: u16,
    /// Virtual hosts, comma-separated.
    pub vhosts: String,
    /// Users as `name:password`, comma-separated.
    pub users: String,
    /// Users who may connect only from a loopback address, comma-separated.
    pub loopback_users: String,
    /// Message bytes held in memory above which publishers are blocked
    /// (`connection.blocked`) until consumers catch up.
    pub memory_high_watermark: ByteSize,
    /// Ready message bytes each durable queue keeps in memory; persistent
    /// messages behind them wait on disk until consumers reach them.
    pub queue_memory_bytes: ByteSize,
    /// Free space on the data directory's disk under which publishers are
    /// blocked.
    pub disk_free_limit: ByteSize,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            listen: ListenAddr::loopback(5672),
            tls_listen: String::new(),
            auth_mechanisms: "PLAIN,AMQPLAIN".to_owned(),
            ssl_cert_login_from: "distinguished_name".to_owned(),
            heartbeat: HumanDuration::from_secs(60),
            frame_max: ByteSize::kib(128),
            channel_max: 2047,
            vhosts: "/".to_owned(),
            users: "guest:guest".to_owned(),
            loopback_users: "guest".to_owned(),
            memory_high_watermark: ByteSize::gib(1),
            queue_memory_bytes: ByteSize::mib(8),
            disk_free_limit: ByteSize::new(50_000_000),
        }
    }
}

/// `[mqtt]`: the MQTT front-end, with the settings of RabbitMQ's MQTT
/// plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Address the MQTT listener binds.
    pub listen: ListenAddr,
    /// HOST:PORT of the MQTTS (TLS) listener (8883 by convention); empty:
    /// none.
    pub tls_listen: String,
    /// Virtual host of a client whose user name names none (`vhost:user`).
    pub vhost: String,
    /// Topic exchange MQTT topics route through.
    pub exchange: String,
    /// Whether a client without a user name logs in as `default_user`.
    pub allow_anonymous: bool,
    /// User of anonymous clients.
    pub default_user: String,
    /// Password of `default_user`.
    pub default_pass: String,
    /// Longest session expiry granted (a persistent MQTT 3.1.1 session
    /// gets it).
    pub max_session_expiry: HumanDuration,
    /// Unacknowledged QoS 1 deliveries per client.
    pub prefetch: u16,
    /// Largest MQTT packet accepted or sent.
    pub max_packet_size: ByteSize,
    /// Queue type of persistent sessions: `quorum` (survives a node's
    /// loss on a cluster) or `classic`.
    pub durable_queue_type: String,
    /// Most topic aliases an MQTT 5 client may set.
    pub topic_alias_max: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: ListenAddr::loopback(1883),
            tls_listen: String::new(),
            vhost: "/".to_owned(),
            exchange: "amq.topic".to_owned(),
            allow_anonymous: true,
            default_user: "guest".to_owned(),
            default_pass: "guest".to_owned(),
            max_session_expiry: HumanDuration::from_secs(86_400),
            prefetch: 10,
            max_packet_size: ByteSize::mib(16),
            durable_queue_type: "quorum".to_owned(),
            topic_alias_max: 64,
        }
    }
}

/// `[stomp]`: the STOMP front-end, with the settings of RabbitMQ's STOMP
/// plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StompConfig {
    /// Address the STOMP listener binds.
    pub listen: ListenAddr,
    /// HOST:PORT of the STOMP-over-TLS listener (61614 by convention);
    /// empty: none.
    pub tls_listen: String,
    /// Virtual host of a client whose `host` header names none.
    pub vhost: String,
    /// Whether a client without `login` logs in as `default_user`.
    pub allow_anonymous: bool,
    /// User of clients that send no `login`.
    pub default_user: String,
    /// Password of `default_user`.
    pub default_pass: String,
    /// Heart-beat interval the server offers and asks for (0s: none).
    pub heartbeat: HumanDuration,
    /// Largest frame body accepted.
    pub max_frame_size: ByteSize,
}

impl Default for StompConfig {
    fn default() -> Self {
        StompConfig {
            listen: ListenAddr::loopback(61613),
            tls_listen: String::new(),
            vhost: "/".to_owned(),
            allow_anonymous: true,
            default_user: "guest".to_owned(),
            default_pass: "guest".to_owned(),
            heartbeat: HumanDuration::from_secs(10),
            max_frame_size: ByteSize::mib(16),
        }
    }
}

/// `[http]`: admin API, web UI and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the HTTP listener binds.
    pub listen: ListenAddr,
    /// Whether it speaks HTTPS (with `[tls]`) instead of HTTP.
    pub tls: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: ListenAddr::loopback(8080),
            tls: false,
        }
    }
}

/// `[logging]`: how the process writes its own log. The filter is not a
/// config key: it comes from `SLUICE_LOG`, else `RUST_LOG`, else `info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// Human-readable text or one JSON object per line.
    pub format: LogFormat,
    /// How often a long recovery at start logs its progress.
    pub progress_interval: HumanDuration,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::default(),
            progress_interval: HumanDuration::new(std::time::Duration::from_secs(5)),
        }
    }
}

/// Output format of the process log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: storage settings every log starts from. They map one to one onto
/// `sluice_log::LogConfig`; the binary converts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A segment rolls once its data file would grow past this size.
    pub segment_bytes: ByteSize,
    /// A segment rolls once its first batch is this old.
    pub segment_time: HumanDuration,
    /// Bytes of data between two entries of the sparse indexes.
    pub index_interval_bytes: ByteSize,
    /// Oldest segments are deleted while a log is larger than this; `None`
    /// (written `"none"`) keeps any size.
    #[serde(with = "or_none")]
    pub retention_bytes: Option<ByteSize>,
    /// Segments whose newest record is older than this are deleted; `None`
    /// (written `"none"`) keeps them forever.
    #[serde(with = "or_none")]
    pub retention_time: Option<HumanDuration>,
    /// How often retention is enforced.
    pub retention_check_interval: HumanDuration,
    /// How often compacted logs are checked for a compaction pass.
    pub compaction_check_interval: HumanDuration,
    /// When an append is acknowledged.
    pub durability: DurabilityMode,
    /// Sync period when `durability` is `interval`.
    pub flush_interval: HumanDuration,
    /// Largest record batch, header included, an append accepts.
    pub max_batch_bytes: ByteSize,
}

impl Default for LogSettings {
    /// The same values as `sluice_log::LogConfig::default()`.
    fn default() -> Self {
        LogSettings {
            segment_bytes: ByteSize::gib(1),
            segment_time: HumanDuration::from_secs(7 * 24 * 3600),
            index_interval_bytes: ByteSize::kib(4),
            retention_bytes: None,
            retention_time: Some(HumanDuration::from_secs(7 * 24 * 3600)),
            retention_check_interval: HumanDuration::from_secs(300),
            compaction_check_interval: HumanDuration::from_secs(15),
            durability: DurabilityMode::Always,
            flush_interval: HumanDuration::from_secs(1),
            max_batch_bytes: ByteSize::new(1024 * 1024 + 12),
        }
    }
}

/// When an append counts as durable; `interval` takes its period from
/// `log.flush_interval`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Acknowledge after fdatasync; concurrent appends share one sync.
    #[default]
    Always,
    /// Acknowledge once written; sync every `log.flush_interval`.
    Interval,
    /// Acknowledge once written; the operating system syncs when it likes.
    Never,
}

/// `[limits]`: caps that keep one client, or many, from exhausting the
/// broker. `None` (written `"none"`) means no cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open client connections, Kafka and AMQP together.
    #[serde(with = "or_none")]
    pub max_connections: Option<u32>,
    /// Open client connections from one IP address.
    #[serde(with = "or_none")]
    pub max_connections_per_ip: Option<u32>,
    /// Topics, stream queues' topics included.
    #[serde(with = "or_none")]
    pub max_topics: Option<u32>,
    /// Queues in one virtual host.
    #[serde(with = "or_none")]
    pub max_queues: Option<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: Some(10_000),
            max_connections_per_ip: None,
            max_topics: Some(10_000),
            max_queues: Some(100_000),
        }
    }
}

/// A listen address, `HOST:PORT`: an IP address (`127.0.0.1:9092`,
/// `[::1]:9092`) or a host name (`localhost:9092`). Kept as written; the
/// listener resolves it when it binds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenAddr(String);

impl ListenAddr {
    fn loopback(port: u16) -> ListenAddr {
        ListenAddr(format!("127.0.0.1:{port}"))
    }

    /// The address as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a listen address did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid listen address {input:?}: {reason}")]
pub struct ParseListenAddrError {
    input: String,
    reason: &'static str,
}

impl FromStr for ListenAddr {
    type Err = ParseListenAddrError;

    fn from_str(input: &str) -> Result<ListenAddr, ParseListenAddrError> {
        if input.parse::<SocketAddr>().is_ok() {
            return Ok(ListenAddr(input.to_owned()));
        }
        let fail = |reason| ParseListenAddrError {
            input: input.to_owned(),
            reason,
        };
        let Some((host, port)) = input.rsplit_once(':') else {
            return Err(fail("expected HOST:PORT, e.g. 127.0.0.1:9092"));
        };
        if port.parse::<u16>().is_err() {
            return Err(fail("the port must be a number from 0 to 65535"));
        }
        let is_host_name = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !is_host_name {
            return Err(fail(
                "the host must be an IP address (IPv6 in brackets) or a host name",
            ));
        }
        Ok(ListenAddr(input.to_owned()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ListenAddr, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// One documented key of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    /// Dotted path: `data_dir`, `log.segment_bytes`.
    pub key: &'static str,
    /// One line on what the key does and which values it takes.
    pub description: &'static str,
}

/// Every key, in the order help and `sluice config show` print them.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "data_dir",
        description: "Directory holding all stored data and the lock that keeps a second broker out",
    },
    KeyDoc {
        key: "node.id",
        description: "This node's id (Kafka's node.id): the broker id in Metadata (0 to 2147483647)",
    },
    KeyDoc {
        key: "cluster.listen",
        description: "HOST:PORT the inter-node listener binds; required with cluster.voters",
    },
    KeyDoc {
        key: "cluster.voters",
        description: "Initial controller quorum, id@host:port,...; empty runs a cluster of one",
    },
    KeyDoc {
        key: "cluster.routes",
        description: "Where this node dials some peers instead of their cluster.voters address (a proxy, a NAT), id@host:port,...",
    },
    KeyDoc {
        key: "cluster.session_timeout",
        description: "A node silent this long is dead and its partitions get new leaders (broker.session.timeout.ms)",
    },
    KeyDoc {
        key: "cluster.tls",
        description: "Mutual TLS on every connection between nodes, with [tls]'s certificate and key",
    },
    KeyDoc {
        key: "cluster.tls_ca_file",
        description: "CA certificates node certificates must chain to, with cluster.tls (a CA that signs nodes only)",
    },
    KeyDoc {
        key: "cluster.replica_lag_max",
        description: "A follower behind its leader this long leaves the in-sync replicas (replica.lag.time.max.ms)",
    },
    KeyDoc {
        key: "kafka.listen",
        description: "HOST:PORT the Kafka listener binds",
    },
    KeyDoc {
        key: "kafka.advertised",
        description: "HOST:PORT Metadata gives clients; empty means the listen address",
    },
    KeyDoc {
        key: "kafka.security_protocol",
        description: "How clients of kafka.listen connect: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    },
    KeyDoc {
        key: "kafka.listeners",
        description: "More Kafka listeners as PROTOCOL://HOST:PORT, comma-separated",
    },
    KeyDoc {
        key: "kafka.advertised_listeners",
        description: "PROTOCOL://HOST:PORT clients reach the extra listeners at; default: where they bind",
    },
    KeyDoc {
        key: "kafka.sasl_mechanisms",
        description: "SASL mechanisms Kafka clients may use: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; empty: all",
    },
    KeyDoc {
        key: "kafka.connections_max_reauth",
        description: "How long a Kafka SASL login holds before re-authentication (KIP-368); 0s: for ever",
    },
    KeyDoc {
        key: "kafka.acls",
        description: "Authorize Kafka requests by ACLs (CreateAcls, DescribeAcls, DeleteAcls); off: every client may do everything",
    },
    KeyDoc {
        key: "kafka.super_users",
        description: "Principals that pass every ACL check, User:NAME, semicolon-separated (super.users)",
    },
    KeyDoc {
        key: "kafka.allow_everyone_if_no_acl_found",
        description: "Whether a resource no ACL names is open to everyone (allow.everyone.if.no.acl.found)",
    },
    KeyDoc {
        key: "kafka.ssl_principal_mapping_rules",
        description: "How an SSL client's certificate names its principal: DEFAULT (the distinguished name) or RULE:pattern/replacement/[LU], comma-separated (ssl.principal.mapping.rules)",
    },
    KeyDoc {
        key: "kafka.max_request_bytes",
        description: "Largest Kafka request; a larger one closes its connection (at least 1KiB)",
    },
    KeyDoc {
        key: "kafka.auto_create_topics",
        description: "Whether Metadata and Produce for an unknown topic create it",
    },
    KeyDoc {
        key: "kafka.default_partitions",
        description: "Partition count of automatically created topics (1 to 10000)",
    },
    KeyDoc {
        key: "kafka.default_replication_factor",
        description: "Replicas of a topic created without a replication factor on a cluster, at most the voters (1 to 16)",
    },
    KeyDoc {
        key: "kafka.offsets_retention",
        description: "Committed offsets of a group with no members and no commit for this long are forgotten",
    },
    KeyDoc {
        key: "kafka.offsets_segment_bytes",
        description: "Segment size of the compacted log of committed offsets (1KiB to 2GiB)",
    },
    KeyDoc {
        key: "kafka.offsets_partitions",
        description: "Partitions of the replicated committed offsets topic of a cluster, read when it is created (1 to 1000)",
    },
    KeyDoc {
        key: "kafka.transaction_state_partitions",
        description: "Partitions of the replicated transactions' states topic of a cluster, read when it is created (1 to 1000)",
    },
    KeyDoc {
        key: "kafka.group_min_session_timeout",
        description: "Shortest session timeout a consumer group member may ask for; shorter joins get INVALID_SESSION_TIMEOUT",
    },
    KeyDoc {
        key: "kafka.group_max_session_timeout",
        description: "Longest session timeout a consumer group member may ask for; longer joins get INVALID_SESSION_TIMEOUT",
    },
    KeyDoc {
        key: "kafka.transaction_max_timeout",
        description: "Longest transaction timeout a transactional producer may ask for (1ms to 24d); longer ones get INVALID_TRANSACTION_TIMEOUT",
    },
    KeyDoc {
        key: "kafka.transactional_id_expiration",
        description: "A transactional id with no transaction open and no use for this long is forgotten (more than 0s)",
    },
    KeyDoc {
        key: "kafka.group_initial_rebalance_delay",
        description: "How long the first join of an empty consumer group waits for more members (0s: no wait)",
    },
    KeyDoc {
        key: "kafka.group_consumer_session_timeout",
        description: "A member of a consumer group of the new protocol (KIP-848) not heard from for this long is fenced",
    },
    KeyDoc {
        key: "kafka.group_consumer_heartbeat_interval",
        description: "How often members of a consumer group of the new protocol heartbeat (less than the session timeout)",
    },
    KeyDoc {
        key: "kafka.group_consumer_assignors",
        description: "Server-side assignors of the new consumer group protocol, comma-separated, the first the default: uniform, range",
    },
    KeyDoc {
        key: "kafka.group_consumer_max_size",
        description: "Most members of one consumer group of the new protocol; a join beyond is refused (GROUP_MAX_SIZE_REACHED)",
    },
    KeyDoc {
        key: "kafka.group_migration_policy",
        description: "Online migration of groups between the classic and new protocol: bidirectional, upgrade, downgrade, disabled",
    },
    KeyDoc {
        key: "kafka.group_share_session_timeout",
        description: "A share group member not heard from for this long leaves, and what it holds is released",
    },
    KeyDoc {
        key: "kafka.group_share_heartbeat_interval",
        description: "How often share group members heartbeat (less than the share session timeout)",
    },
    KeyDoc {
        key: "kafka.group_share_record_lock_duration",
        description: "How long a record fetched by a share group member stays acquired before it is available again (1s to 1h)",
    },
    KeyDoc {
        key: "kafka.group_share_delivery_count_limit",
        description: "Deliveries of a record to share group members before it is archived (2 to 10)",
    },
    KeyDoc {
        key: "kafka.group_share_max_record_locks",
        description: "Most records in flight per share partition (100 to 10000)",
    },
    KeyDoc {
        key: "kafka.share_auto_offset_reset",
        description: "Where a share partition starts when first fetched: latest or earliest",
    },
    KeyDoc {
        key: "mqtt.listen",
        description: "HOST:PORT the MQTT listener binds",
    },
    KeyDoc {
        key: "mqtt.tls_listen",
        description: "HOST:PORT of the MQTTS (TLS) listener; empty: none",
    },
    KeyDoc {
        key: "mqtt.vhost",
        description: "Virtual host of MQTT clients whose user name names none (vhost:user)",
    },
    KeyDoc {
        key: "mqtt.exchange",
        description: "Topic exchange MQTT topics route through",
    },
    KeyDoc {
        key: "mqtt.allow_anonymous",
        description: "Whether an MQTT client without a user name logs in as mqtt.default_user",
    },
    KeyDoc {
        key: "mqtt.default_user",
        description: "User of anonymous MQTT clients",
    },
    KeyDoc {
        key: "mqtt.default_pass",
        description: "Password of mqtt.default_user",
    },
    KeyDoc {
        key: "mqtt.max_session_expiry",
        description: "Longest MQTT session expiry granted; persistent MQTT 3.1.1 sessions get it (1s to 136y)",
    },
    KeyDoc {
        key: "mqtt.prefetch",
        description: "Unacknowledged QoS 1 deliveries per MQTT client (1 to 65535)",
    },
    KeyDoc {
        key: "mqtt.max_packet_size",
        description: "Largest MQTT packet accepted or sent (1KiB to 256MiB)",
    },
    KeyDoc {
        key: "mqtt.durable_queue_type",
        description: "Queue type of persistent MQTT sessions: quorum or classic",
    },
    KeyDoc {
        key: "mqtt.topic_alias_max",
        description: "Most topic aliases an MQTT 5 client may set (0 to 65535)",
    },
    KeyDoc {
        key: "stomp.listen",
        description: "HOST:PORT the STOMP listener binds",
    },
    KeyDoc {
        key: "stomp.tls_listen",
        description: "HOST:PORT of the STOMP-over-TLS listener; empty: none",
    },
    KeyDoc {
        key: "stomp.vhost",
        description: "Virtual host of STOMP clients whose host header names none",
    },
    KeyDoc {
        key: "stomp.allow_anonymous",
        description: "Whether a STOMP client without login logs in as stomp.default_user",
    },
    KeyDoc {
        key: "stomp.default_user",
        description: "User of STOMP clients that send no login",
    },
    KeyDoc {
        key: "stomp.default_pass",
        description: "Password of stomp.default_user",
    },
    KeyDoc {
        key: "stomp.heartbeat",
        description: "Heart-beat interval the STOMP server offers and asks for (0s: none)",
    },
    KeyDoc {
        key: "stomp.max_frame_size",
        description: "Largest STOMP frame body accepted (1KiB to 256MiB)",
    },
    KeyDoc {
        key: "amqp.listen",
        description: "HOST:PORT the AMQP 0-9-1 listener binds",
    },
    KeyDoc {
        key: "amqp.tls_listen",
        description: "HOST:PORT of the AMQPS (TLS) listener; empty: none",
    },
    KeyDoc {
        key: "amqp.auth_mechanisms",
        description: "SASL mechanisms offered to AMQP clients: PLAIN, AMQPLAIN, EXTERNAL (client certificates), comma-separated",
    },
    KeyDoc {
        key: "amqp.ssl_cert_login_from",
        description: "What names the user of an AMQP EXTERNAL login: the client certificate's distinguished_name or common_name",
    },
    KeyDoc {
        key: "amqp.heartbeat",
        description: "Heartbeat interval offered to AMQP clients (0s: none; at most 65535s)",
    },
    KeyDoc {
        key: "amqp.frame_max",
        description: "Largest AMQP frame offered to clients (4KiB to 16MiB)",
    },
    KeyDoc {
        key: "amqp.channel_max",
        description: "Most channels per AMQP connection offered to clients (1 to 65535)",
    },
    KeyDoc {
        key: "amqp.vhosts",
        description: "AMQP virtual hosts, comma-separated",
    },
    KeyDoc {
        key: "amqp.users",
        description: "AMQP users as name:password, comma-separated",
    },
    KeyDoc {
        key: "amqp.loopback_users",
        description: "AMQP users who may connect only from a loopback address, comma-separated",
    },
    KeyDoc {
        key: "amqp.memory_high_watermark",
        description: "Message bytes held in memory above which AMQP publishers are blocked and Kafka producers throttled",
    },
    KeyDoc {
        key: "amqp.queue_memory_bytes",
        description: "Ready message bytes each durable queue keeps in memory; persistent messages behind them wait on disk",
    },
    KeyDoc {
        key: "amqp.disk_free_limit",
        description: "Free space on the data directory's disk under which AMQP publishers are blocked and Kafka produce fails",
    },
    KeyDoc {
        key: "http.listen",
        description: "HOST:PORT of the admin API, web UI and metrics",
    },
    KeyDoc {
        key: "http.tls",
        description: "Whether the HTTP listener speaks HTTPS (with [tls])",
    },
    KeyDoc {
        key: "tls.cert_file",
        description: "PEM certificate chain of every TLS listener",
    },
    KeyDoc {
        key: "tls.key_file",
        description: "PEM private key of tls.cert_file",
    },
    KeyDoc {
        key: "tls.ca_file",
        description: "PEM CA certificates client certificates must chain to",
    },
    KeyDoc {
        key: "tls.client_auth",
        description: "Client certificates: none, optional or required (mTLS)",
    },
    KeyDoc {
        key: "tls.reload_interval",
        description: "How often the TLS files are checked for changes (SIGHUP reloads at once)",
    },
    KeyDoc {
        key: "limits.max_connections",
        description: "Most open client connections, Kafka and AMQP together, or \"none\"",
    },
    KeyDoc {
        key: "limits.max_connections_per_ip",
        description: "Most open client connections from one IP address, or \"none\"",
    },
    KeyDoc {
        key: "limits.max_topics",
        description: "Most topics (stream queues' topics included), or \"none\"",
    },
    KeyDoc {
        key: "limits.max_queues",
        description: "Most queues in one virtual host, or \"none\"",
    },
    KeyDoc {
        key: "logging.format",
        description: "Process log format: text or json (filter: SLUICE_LOG, else RUST_LOG, else info)",
    },
    KeyDoc {
        key: "logging.progress_interval",
        description: "How often a long recovery at start logs a progress line",
    },
    KeyDoc {
        key: "log.segment_bytes",
        description: "Segment size at which a log rolls to a new segment (at least 1KiB, at most 2GiB)",
    },
    KeyDoc {
        key: "log.segment_time",
        description: "Age of a segment's first batch at which the log rolls (at least 1ms)",
    },
    KeyDoc {
        key: "log.index_interval_bytes",
        description: "Bytes of data between two sparse index entries (at least 1B)",
    },
    KeyDoc {
        key: "log.retention_bytes",
        description: "Oldest segments are deleted while a log is larger than this, or \"none\"",
    },
    KeyDoc {
        key: "log.retention_time",
        description: "Segments older than this are deleted, or \"none\" to keep them",
    },
    KeyDoc {
        key: "log.retention_check_interval",
        description: "How often retention deletes old segments (at least 1ms)",
    },
    KeyDoc {
        key: "log.compaction_check_interval",
        description: "How often compacted logs (committed offsets, compacted topics) are checked for a compaction pass (at least 1ms)",
    },
    KeyDoc {
        key: "log.durability",
        description: "When an append is acknowledged: always (after fsync), interval, never",
    },
    KeyDoc {
        key: "log.flush_interval",
        description: "Sync period when log.durability is interval (at least 1ms)",
    },
    KeyDoc {
        key: "log.max_batch_bytes",
        description: "Largest record batch, header included, an append accepts (at least 61B)",
    },
];

/// The documentation of `key`, if it is a key.
pub fn key_doc(key: &str) -> Option<&'static KeyDoc> {
    KEYS.iter().find(|doc| doc.key == key)
}

/// The environment variable that sets `key`: `log.segment_bytes` is
/// `SLUICE_LOG__SEGMENT_BYTES`.
pub fn env_var_name(key: &str) -> String {
    format!("SLUICE_{}", key.replace('.', "__").to_ascii_uppercase())
}

/// Smallest segment: tests roll often with tiny segments, but a segment must
/// hold at least one index interval of data to be useful.
/// Kafka's `group.consumer.max.size` default and ceiling (an int32).
const MAX_GROUP_SIZE: u32 = 2_147_483_647;
const MIN_SEGMENT_BYTES: ByteSize = ByteSize::kib(1);
/// Largest segment: index entries store a file position in 32 bits, and a
/// batch may start just below this limit.
const MAX_SEGMENT_BYTES: ByteSize = ByteSize::gib(2);
/// A RecordBatch v2 header alone is 61 bytes.
const MIN_BATCH_BYTES: ByteSize = ByteSize::new(61);

/// A semantic problem with one key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) key: &'static str,
    pub(crate) message: String,
}

impl Config {
    /// Checks what the types alone cannot: ranges and limits. Returns every
    /// problem found, so a file with several mistakes is fixed in one round.
    pub(crate) fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |key, message| problems.push(Problem { key, message });
        if self.data_dir.as_os_str().is_empty() {
            problem("data_dir", "data_dir must not be empty".to_owned());
        }
        if self.node.id < 0 {
            problem(
                "node.id",
                format!("node.id must be 0 or more, got {}", self.node.id),
            );
        }
        let cluster = &self.cluster;
        if let Err(message) = cluster.route_list() {
            problem("cluster.routes", message);
        }
        match cluster.voter_list() {
            Err(message) => problem("cluster.voters", message),
            Ok(voters) if !voters.is_empty() => {
                if cluster.listen.is_empty() {
                    problem(
                        "cluster.listen",
                        "cluster.listen must be set when cluster.voters is".to_owned(),
                    );
                } else if cluster.listen.parse::<ListenAddr>().is_err() {
                    problem(
                        "cluster.listen",
                        format!("cluster.listen must be HOST:PORT, got {:?}", cluster.listen),
                    );
                }
                // A node the voters do not name joins the cluster as a
                // node that does not vote.
            }
            Ok(_) => {}
        }
        let kafka = &self.kafka;
        if !kafka.advertised.is_empty() {
            let valid = kafka
                .advertised
                .rsplit_once(':')
                .is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
            if !valid {
                problem(
                    "kafka.advertised",
                    format!(
                        "kafka.advertised must be HOST:PORT with a port from 1 to 65535, got {:?}",
                        kafka.advertised
                    ),
                );
            }
        }
        if kafka.max_request_bytes < ByteSize::kib(1) {
            problem(
                "kafka.max_request_bytes",
                at_least(
                    "kafka.max_request_bytes",
                    ByteSize::kib(1),
                    kafka.max_request_bytes,
                ),
            );
        }
        if !(1..=16).contains(&kafka.default_replication_factor) {
            problem(
                "kafka.default_replication_factor",
                format!(
                    "kafka.default_replication_factor must be from 1 to 16, got {}",
                    kafka.default_replication_factor
                ),
            );
        }
        if !(1..=1000).contains(&kafka.offsets_partitions) {
            problem(
                "kafka.offsets_partitions",
                format!(
                    "kafka.offsets_partitions must be from 1 to 1000, got {}",
                    kafka.offsets_partitions
                ),
            );
        }
        if !(1..=1000).contains(&kafka.transaction_state_partitions) {
            problem(
                "kafka.transaction_state_partitions",
                format!(
                    "kafka.transaction_state_partitions must be from 1 to 1000, got {}",
                    kafka.transaction_state_partitions
                ),
            );
        }
        if !(1..=10_000).contains(&kafka.default_partitions) {
            problem(
                "kafka.default_partitions",
                format!(
                    "kafka.default_partitions must be from 1 to 10000, got {}",
                    kafka.default_partitions
                ),
            );
        }
        if kafka.group_min_session_timeout.get().is_zero() {
            problem(
                "kafka.group_min_session_timeout",
                format!(
                    "kafka.group_min_session_timeout must be more than 0s, got {}",
                    kafka.group_min_session_timeout
                ),
            );
        }
        let max_timeout = kafka.transaction_max_timeout.get();
        if max_timeout.is_zero() || max_timeout.as_millis() > i32::MAX as u128 {
            problem(
                "kafka.transaction_max_timeout",
                format!(
                    "kafka.transaction_max_timeout must be from 1ms to 24d, got {}",
                    kafka.transaction_max_timeout
                ),
            );
        }
        let expiration = kafka.transactional_id_expiration.get();
        if expiration.is_zero() || expiration.as_millis() > i64::MAX as u128 {
            problem(
                "kafka.transactional_id_expiration",
                format!(
                    "kafka.transactional_id_expiration must be more than 0s, got {}",
                    kafka.transactional_id_expiration
                ),
            );
        }
        let session = kafka.group_consumer_session_timeout.get();
        let interval = kafka.group_consumer_heartbeat_interval.get();
        if interval.is_zero() || interval >= session || session.as_millis() > i32::MAX as u128 {
            problem(
                "kafka.group_consumer_heartbeat_interval",
                format!(
                    "kafka.group_consumer_heartbeat_interval must be more than 0s and less than kafka.group_consumer_session_timeout ({}, at most 24d), got {}",
                    kafka.group_consumer_session_timeout, kafka.group_consumer_heartbeat_interval
                ),
            );
        }
        if kafka.group_consumer_max_size == 0 || kafka.group_consumer_max_size > MAX_GROUP_SIZE {
            problem(
                "kafka.group_consumer_max_size",
                format!(
                    "kafka.group_consumer_max_size must be from 1 to 2147483647, got {}",
                    kafka.group_consumer_max_size
                ),
            );
        }
        if !matches!(
            kafka.group_migration_policy.as_str(),
            "bidirectional" | "upgrade" | "downgrade" | "disabled"
        ) {
            problem(
                "kafka.group_migration_policy",
                format!(
                    "kafka.group_migration_policy must be bidirectional, upgrade, downgrade or disabled, got {:?}",
                    kafka.group_migration_policy
                ),
            );
        }
        let session = kafka.group_share_session_timeout.get();
        let interval = kafka.group_share_heartbeat_interval.get();
        if interval.is_zero() || interval >= session || session.as_millis() > i32::MAX as u128 {
            problem(
                "kafka.group_share_heartbeat_interval",
                format!(
                    "kafka.group_share_heartbeat_interval must be more than 0s and less than kafka.group_share_session_timeout ({}, at most 24d), got {}",
                    kafka.group_share_session_timeout, kafka.group_share_heartbeat_interval
                ),
            );
        }
        let assignors: Vec<&str> = kafka
            .group_consumer_assignors
            .split(',')
            .map(str::trim)
            .collect();
        if assignors.iter().any(|a| !matches!(*a, "uniform" | "range")) {
            problem(
                "kafka.group_consumer_assignors",
                format!(
                    "kafka.group_consumer_assignors must name uniform and/or range, comma-separated, got {:?}",
                    kafka.group_consumer_assignors
                ),
            );
        }
        let lock = kafka.group_share_record_lock_duration.get();
        if lock < std::time::Duration::from_secs(1) || lock > std::time::Duration::from_secs(3600) {
            problem(
                "kafka.group_share_record_lock_duration",
                format!(
                    "kafka.group_share_record_lock_duration must be from 1s to 1h, got {}",
                    kafka.group_share_record_lock_duration
                ),
            );
        }
        if !(2..=10).contains(&kafka.group_share_delivery_count_limit) {
            problem(
                "kafka.group_share_delivery_count_limit",
                format!(
                    "kafka.group_share_delivery_count_limit must be from 2 to 10, got {}",
                    kafka.group_share_delivery_count_limit
                ),
            );
        }
        if !(100..=10_000).contains(&kafka.group_share_max_record_locks) {
            problem(
                "kafka.group_share_max_record_locks",
                format!(
                    "kafka.group_share_max_record_locks must be from 100 to 10000, got {}",
                    kafka.group_share_max_record_locks
                ),
            );
        }
        if !matches!(
            kafka.share_auto_offset_reset.as_str(),
            "latest" | "earliest"
        ) {
            problem(
                "kafka.share_auto_offset_reset",
                format!(
                    "kafka.share_auto_offset_reset must be latest or earliest, got {:?}",
                    kafka.share_auto_offset_reset
                ),
            );
        }
        if kafka.group_max_session_timeout < kafka.group_min_session_timeout {
            problem(
                "kafka.group_max_session_timeout",
                format!(
                    "kafka.group_max_session_timeout must be at least kafka.group_min_session_timeout ({}), got {}",
                    kafka.group_min_session_timeout, kafka.group_max_session_timeout
                ),
            );
        }
        let amqp = &self.amqp;
        if amqp.heartbeat.get().as_secs() > u64::from(u16::MAX) {
            problem(
                "amqp.heartbeat",
                format!(
                    "amqp.heartbeat must be at most 65535s, got {}",
                    amqp.heartbeat
                ),
            );
        }
        if !(4096..=16 << 20).contains(&amqp.frame_max.bytes()) {
            problem(
                "amqp.frame_max",
                format!(
                    "amqp.frame_max must be from 4KiB to 16MiB, got {}",
                    amqp.frame_max
                ),
            );
        }
        let mechanisms = split_list(&amqp.auth_mechanisms);
        if mechanisms.is_empty() {
            problem(
                "amqp.auth_mechanisms",
                "amqp.auth_mechanisms must name at least one mechanism".to_owned(),
            );
        }
        for mechanism in mechanisms {
            if !["PLAIN", "AMQPLAIN", "EXTERNAL"].contains(&mechanism) {
                problem(
                    "amqp.auth_mechanisms",
                    format!(
                        "amqp.auth_mechanisms may name PLAIN, AMQPLAIN and EXTERNAL, got {mechanism:?}"
                    ),
                );
            }
        }
        if !["distinguished_name", "common_name"].contains(&amqp.ssl_cert_login_from.as_str()) {
            problem(
                "amqp.ssl_cert_login_from",
                format!(
                    "amqp.ssl_cert_login_from must be distinguished_name or common_name, got {:?}",
                    amqp.ssl_cert_login_from
                ),
            );
        }
        let mqtt = &self.mqtt;
        if !["quorum", "classic"].contains(&mqtt.durable_queue_type.as_str()) {
            problem(
                "mqtt.durable_queue_type",
                format!(
                    "mqtt.durable_queue_type must be quorum or classic, got {:?}",
                    mqtt.durable_queue_type
                ),
            );
        }
        if mqtt.prefetch == 0 {
            problem(
                "mqtt.prefetch",
                "mqtt.prefetch must be at least 1, got 0".to_owned(),
            );
        }
        if mqtt.max_packet_size < ByteSize::kib(1) || mqtt.max_packet_size > ByteSize::mib(256) {
            problem(
                "mqtt.max_packet_size",
                format!(
                    "mqtt.max_packet_size must be from 1KiB to 256MiB, got {}",
                    mqtt.max_packet_size
                ),
            );
        }
        let expiry = mqtt.max_session_expiry.get().as_secs();
        if expiry == 0 || expiry > u64::from(u32::MAX) {
            problem(
                "mqtt.max_session_expiry",
                format!(
                    "mqtt.max_session_expiry must be from 1s to 4294967295s, got {}",
                    mqtt.max_session_expiry
                ),
            );
        }
        let stomp = &self.stomp;
        if stomp.max_frame_size < ByteSize::kib(1) || stomp.max_frame_size > ByteSize::mib(256) {
            problem(
                "stomp.max_frame_size",
                format!(
                    "stomp.max_frame_size must be from 1KiB to 256MiB, got {}",
                    stomp.max_frame_size
                ),
            );
        }
        if mqtt.exchange.is_empty() || mqtt.vhost.is_empty() {
            problem(
                "mqtt.exchange",
                "mqtt.exchange and mqtt.vhost must not be empty".to_owned(),
            );
        }
        if amqp.channel_max == 0 {
            problem(
                "amqp.channel_max",
                "amqp.channel_max must be at least 1, got 0".to_owned(),
            );
        }
        if split_list(&amqp.vhosts).is_empty() {
            problem(
                "amqp.vhosts",
                "amqp.vhosts must name at least one virtual host".to_owned(),
            );
        }
        let kafka = &self.kafka;
        let mut tls_wanted = Vec::new();
        match kafka.listener_list() {
            Ok(listeners) => {
                for (protocol, _) in listeners {
                    if protocol == "SSL" || protocol == "SASL_SSL" {
                        tls_wanted.push("kafka.listeners");
                    }
                }
            }
            Err(message) => problem("kafka.listeners", message),
        }
        if let Err(message) = kafka.advertised_listener_list() {
            problem("kafka.advertised_listeners", message);
        }
        for mechanism in split_list(&kafka.sasl_mechanisms) {
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism) {
                problem(
                    "kafka.sasl_mechanisms",
                    format!(
                        "kafka.sasl_mechanisms may name PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, got {mechanism:?}"
                    ),
                );
            }
        }
        for principal in kafka.super_user_list() {
            if principal.strip_prefix("User:").is_none_or(str::is_empty) {
                problem(
                    "kafka.super_users",
                    format!("kafka.super_users names principals as User:NAME, got {principal:?}"),
                );
            }
        }
        if kafka.tls_protocol() {
            tls_wanted.push("kafka.security_protocol");
        }
        if !SECURITY_PROTOCOLS.contains(&kafka.security_protocol.as_str()) {
            problem(
                "kafka.security_protocol",
                format!(
                    "kafka.security_protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, got {:?}",
                    kafka.security_protocol
                ),
            );
        }
        if !self.amqp.tls_listen.is_empty() {
            tls_wanted.push("amqp.tls_listen");
        }
        if self.http.tls {
            tls_wanted.push("http.tls");
        }
        if self.cluster.tls {
            tls_wanted.push("cluster.tls");
            if self.cluster.tls_ca_file.is_empty() {
                problem(
                    "cluster.tls_ca_file",
                    "cluster.tls checks the other nodes' certificates: set cluster.tls_ca_file to the CA that signs nodes"
                        .to_owned(),
                );
            }
        }
        let tls = &self.tls;
        if let Some(first) = tls_wanted.first()
            && (tls.cert_file.is_empty() || tls.key_file.is_empty())
        {
            problem(
                "tls.cert_file",
                format!("{first} asks for TLS: set tls.cert_file and tls.key_file"),
            );
        }
        match tls.client_auth.as_str() {
            "none" => {}
            "optional" | "required" if !tls.ca_file.is_empty() => {}
            "optional" | "required" => problem(
                "tls.ca_file",
                "tls.client_auth checks client certificates: set tls.ca_file".to_owned(),
            ),
            other => problem(
                "tls.client_auth",
                format!("tls.client_auth must be none, optional or required, got {other:?}"),
            ),
        }
        // The entry itself is never echoed: it may hold a password.
        for (position, user) in split_list(&amqp.users).into_iter().enumerate() {
            if !user.contains(':') || user.starts_with(':') {
                problem(
                    "amqp.users",
                    format!(
                        "amqp.users entries must be name:password; entry {} is not",
                        position + 1
                    ),
                );
            }
        }
        let limits = &self.limits;
        for (key, value) in [
            ("limits.max_connections", limits.max_connections),
            (
                "limits.max_connections_per_ip",
                limits.max_connections_per_ip,
            ),
            ("limits.max_topics", limits.max_topics),
            ("limits.max_queues", limits.max_queues),
        ] {
            if value == Some(0) {
                problem(key, format!("{key} must be at least 1 or \"none\", got 0"));
            }
        }
        let offsets_segment = self.kafka.offsets_segment_bytes;
        if offsets_segment < MIN_SEGMENT_BYTES || offsets_segment > MAX_SEGMENT_BYTES {
            problem(
                "kafka.offsets_segment_bytes",
                format!(
                    "kafka.offsets_segment_bytes must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}, got {offsets_segment}"
                ),
            );
        }
        let log = &self.log;
        if self.logging.progress_interval.get().is_zero() {
            problem(
                "logging.progress_interval",
                "logging.progress_interval must be at least 1ms, got 0s".to_owned(),
            );
        }
        if log.compaction_check_interval.get().is_zero() {
            problem(
                "log.compaction_check_interval",
                "log.compaction_check_interval must be at least 1ms, got 0s".to_owned(),
            );
        }
        if log.segment_bytes < MIN_SEGMENT_BYTES {
            problem(
                "log.segment_bytes",
                at_least("log.segment_bytes", MIN_SEGMENT_BYTES, log.segment_bytes),
            );
        }
        if log.segment_bytes > MAX_SEGMENT_BYTES {
            problem(
                "log.segment_bytes",
                format!(
                    "log.segment_bytes must be at most {MAX_SEGMENT_BYTES}, got {}",
                    log.segment_bytes
                ),
            );
        }
        if log.segment_time.get().is_zero() {
            problem(
                "log.segment_time",
                "log.segment_time must be at least 1ms, got 0s".to_owned(),
            );
        }
        if log.index_interval_bytes.bytes() == 0 {
            problem(
                "log.index_interval_bytes",
                "log.index_interval_bytes must be at least 1, got 0".to_owned(),
            );
        }
        if u32::try_from(log.index_interval_bytes.bytes()).is_err() {
            problem(
                "log.index_interval_bytes",
                format!(
                    "log.index_interval_bytes must be below 4GiB, got {}",
                    log.index_interval_bytes
                ),
            );
        }
        if log.retention_bytes.is_some_and(|bytes| bytes.bytes() == 0) {
            problem(
                "log.retention_bytes",
                "log.retention_bytes must be at least 1 or \"none\", got 0".to_owned(),
            );
        }
        if log.retention_time.is_some_and(|time| time.get().is_zero()) {
            problem(
                "log.retention_time",
                "log.retention_time must be at least 1ms or \"none\", got 0s".to_owned(),
            );
        }
        if log.retention_check_interval.get().is_zero() {
            problem(
                "log.retention_check_interval",
                "log.retention_check_interval must be at least 1ms, got 0s".to_owned(),
            );
        }
        if log.flush_interval.get().is_zero() {
            problem(
                "log.flush_interval",
                "log.flush_interval must be at least 1ms, got 0s".to_owned(),
            );
        }
        if log.max_batch_bytes < MIN_BATCH_BYTES {
            problem(
                "log.max_batch_bytes",
                at_least("log.max_batch_bytes", MIN_BATCH_BYTES, log.max_batch_bytes),
            );
        }
        if u32::try_from(log.max_batch_bytes.bytes()).is_err() {
            problem(
                "log.max_batch_bytes",
                format!(
                    "log.max_batch_bytes must be below 4GiB, got {}",
                    log.max_batch_bytes
                ),
            );
        }
        problems
    }
}

fn at_least(key: &str, minimum: ByteSize, got: ByteSize) -> String {
    format!("{key} must be at least {minimum}, got {got}")
}

/// Keys whose values hold secrets: logs, `sluice config show`, the admin
/// API and error messages show them through [`redact`].
pub const SECRET_KEYS: &[&str] = &["amqp.users", "mqtt.default_pass", "stomp.default_pass"];

/// `value` of `key` as it may be shown to people: for `amqp.users` each
/// `name:password` becomes `name:****`; other keys are returned unchanged.
pub fn redact(key: &str, value: &str) -> String {
    if !SECRET_KEYS.contains(&key) {
        return value.to_owned();
    }
    if key == "mqtt.default_pass" || key == "stomp.default_pass" {
        return "****".to_owned();
    }
    split_list(value)
        .into_iter()
        .map(|entry| match entry.split_once(':') {
            Some((name, _)) => format!("{name}:****"),
            None => "****".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The entries of a comma-separated list, trimmed, empty ones dropped.
pub fn split_list(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect()
}
