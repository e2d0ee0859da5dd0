//! Kafka 4's online migration between classic groups and consumer groups
//! of the new protocol, on the wire: the consumer protocol's embedded
//! subscription and assignment (a version, then the message) decoded and
//! encoded for the core, which keeps topics by id.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_core::UpgradingMember;
use sluice_core::consumer_groups::{Assignment, ClassicMember, TopicCatalog};

/// The newest consumer protocol version Sluice reads and writes.
const NEWEST: i16 = 3;

/// A classic member's subscription: the topics it names and the
/// partitions it says it owns (versions 1+; eager protocols send none).
pub(crate) struct Subscription {
    pub(crate) topics: Vec<String>,
    pub(crate) owned: Vec<(String, Vec<i32>)>,
}

/// The subscription in the first protocol's metadata (every protocol of a
/// member carries the same one); `None` when it cannot be read.
pub(crate) fn subscription(protocols: &[(String, Bytes)]) -> Option<Subscription> {
    let (_, metadata) = protocols.first()?;
    let mut bytes = metadata.clone();
    if bytes.remaining() < 2 {
        return None;
    }
    let version = bytes.get_i16();
    let decoded =
        ConsumerProtocolSubscription::decode(&mut bytes, version.clamp(0, NEWEST)).ok()?;
    Some(Subscription {
        topics: decoded.topics.iter().map(ToString::to_string).collect(),
        owned: decoded
            .owned_partitions
            .into_iter()
            .map(|t| (t.topic.to_string(), t.partitions))
            .collect(),
    })
}

/// An assignment as the classic leader encoded it; empty bytes (no
/// assignment yet) are none.
fn assignment(bytes: &Bytes) -> Option<Vec<(String, Vec<i32>)>> {
    let mut bytes = bytes.clone();
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    if bytes.remaining() < 2 {
        return None;
    }
    let version = bytes.get_i16();
    let decoded = ConsumerProtocolAssignment::decode(&mut bytes, version.clamp(0, NEWEST)).ok()?;
    Some(
        decoded
            .assigned_partitions
            .into_iter()
            .map(|t| (t.topic.to_string(), t.partitions))
            .collect(),
    )
}

/// Partitions by topic name as the core keeps them, by topic id; topics
/// the broker does not have are left out.
pub(crate) fn by_id(partitions: &[(String, Vec<i32>)], catalog: &TopicCatalog) -> Assignment {
    let mut assigned = Assignment::new();
    for (name, list) in partitions {
        if let Some((id, _)) = catalog.get(name) {
            assigned.entry(id).or_default().extend(list.iter().copied());
        }
    }
    assigned
}

/// `assignment` encoded in the consumer protocol version of `metadata`
/// (the member's subscription), as SyncGroup hands it to the member.
pub(crate) fn encode_assignment(
    assigned: &Assignment,
    metadata: &Bytes,
    catalog: &TopicCatalog,
) -> Bytes {
    let version = if metadata.len() >= 2 {
        i16::from_be_bytes([metadata[0], metadata[1]]).clamp(0, NEWEST)
    } else {
        0
    };
    let message = ConsumerProtocolAssignment::default().with_assigned_partitions(
        assigned
            .iter()
            .filter_map(|(id, partitions)| {
                let name = catalog.name_of(id)?;
                Some(
                    TopicPartition::default()
                        .with_topic(TopicName(StrBytes::from_string(name.to_owned())))
                        .with_partitions(partitions.iter().copied().collect()),
                )
            })
            .collect(),
    );
    let mut out = BytesMut::new();
    out.put_i16(version);
    if message.encode(&mut out, version).is_err() {
        return Bytes::new();
    }
    out.freeze()
}

/// A classic member as an upgrade takes it: its subscription and its
/// assignment decoded. What it may own is what its leader gave it, what
/// its subscription says it owns (a cooperative member between a join and
/// a sync) and what it carried from an earlier consumer group; `None`
/// when its consumer-protocol metadata cannot be read (the upgrade is
/// refused).
pub(crate) fn decode_member(
    upgrading: UpgradingMember,
    catalog: &TopicCatalog,
) -> Option<ClassicMember> {
    let mut member = upgrading.member;
    let subscribed = subscription(&member.protocols)?;
    let given = assignment(&upgrading.assignment)?;
    member.topics = subscribed.topics;
    for (topic, partitions) in by_id(&given, catalog)
        .into_iter()
        .chain(by_id(&subscribed.owned, catalog))
    {
        member.assigned.entry(topic).or_default().extend(partitions);
    }
    Some(member)
}
