//! The packets of MQTT 3.1, 3.1.1 and 5.0 in one shape: the `rmqtt-codec`
//! crate decodes and encodes each version; this file turns its packets
//! into what the connection acts on and back, so that the session logic
//! is written once. MQTT 3 packets simply carry no properties.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use rmqtt_codec::error::{DecodeError, EncodeError};
use rmqtt_codec::types::QoS;
use rmqtt_codec::version::ProtocolVersion;
use rmqtt_codec::{MqttCodec, MqttPacket, v3, v5};
use tokio_util::codec::{Decoder, Encoder};

/// The protocol a client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// 3.1 (level 3) or 3.1.1 (level 4).
    V3(u8),
    V5,
}

impl Version {
    /// `3.1`, `3.1.1` or `5.0`, for the admin API and logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Version::V3(3) => "3.1",
            Version::V3(_) => "3.1.1",
            Version::V5 => "5.0",
        }
    }
}

/// MQTT 5 message properties as Sluice carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Properties {
    pub(crate) expiry_secs: Option<u32>,
    pub(crate) content_type: Option<String>,
    pub(crate) response_topic: Option<String>,
    pub(crate) correlation_data: Option<Bytes>,
    pub(crate) user_properties: Vec<(String, String)>,
    pub(crate) utf8_payload: bool,
    /// Inbound only.
    pub(crate) topic_alias: Option<u16>,
    /// Outbound only: the identifiers of the subscriptions it matched.
    pub(crate) subscription_ids: Vec<u32>,
}

/// A will message (CONNECT's will flag and fields).
#[derive(Debug, Clone)]
pub(crate) struct Will {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    /// MQTT 5 Will Delay Interval.
    pub(crate) delay_secs: u32,
    pub(crate) properties: Properties,
}

/// CONNECT.
#[derive(Debug)]
pub(crate) struct Connect {
    pub(crate) version: Version,
    /// Clean Session (3) or Clean Start (5).
    pub(crate) clean_start: bool,
    pub(crate) keep_alive: u16,
    /// MQTT 5 Session Expiry Interval (0 for 3: see the session rules).
    pub(crate) session_expiry_secs: u32,
    pub(crate) receive_max: u16,
    pub(crate) max_packet_size: Option<u32>,
    pub(crate) client_id: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Bytes>,
    pub(crate) will: Option<Will>,
    /// MQTT 5 enhanced authentication, which Sluice does not offer.
    pub(crate) auth_method: Option<String>,
}

/// PUBLISH, either way.
#[derive(Debug, Clone)]
pub(crate) struct Publish {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    pub(crate) dup: bool,
    pub(crate) packet_id: Option<u16>,
    pub(crate) properties: Properties,
}

/// A subscription's options (MQTT 5 §3.8.3.1; 3 has the QoS alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SubscriptionOptions {
    pub(crate) qos: u8,
    pub(crate) no_local: bool,
    pub(crate) retain_as_published: bool,
    /// 0: send retained messages; 1: only for a new subscription; 2: none.
    pub(crate) retain_handling: u8,
}

/// What a client sends.
#[derive(Debug)]
pub(crate) enum Inbound {
    Connect(Box<Connect>),
    Publish(Box<Publish>),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        packet_id: u16,
        id: Option<u32>,
        filters: Vec<(String, SubscriptionOptions)>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect {
        reason: u8,
        session_expiry_secs: Option<u32>,
    },
    /// AUTH (MQTT 5 enhanced authentication).
    Auth,
    /// A packet only a server sends.
    ServerOnly(&'static str),
}

/// CONNACK's outcome, named as MQTT 5 names it; MQTT 3 gets the nearest
/// of its return codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnackCode {
    Success,
    ClientIdentifierNotValid,
    BadUserNameOrPassword,
    NotAuthorized,
    BadAuthenticationMethod,
    /// MQTT 5 only (a will above the Maximum QoS).
    QosNotSupported,
}

/// CONNACK.
#[derive(Debug, Clone)]
pub(crate) struct ConnAck {
    pub(crate) session_present: bool,
    pub(crate) code: ConnackCode,
    pub(crate) reason: Option<String>,
    pub(crate) assigned_client_id: Option<String>,
    /// The session expiry the server settled on, when it differs.
    pub(crate) session_expiry_secs: Option<u32>,
    pub(crate) receive_max: u16,
    pub(crate) topic_alias_max: u16,
    pub(crate) max_packet_size: u32,
}

/// What the server sends.
#[derive(Debug)]
pub(crate) enum Outbound {
    ConnAck(Box<ConnAck>),
    Publish(Box<Publish>),
    PubAck {
        packet_id: u16,
        reason: u8,
    },
    PubRec {
        packet_id: u16,
        reason: u8,
    },
    PubComp {
        packet_id: u16,
        reason: u8,
    },
    SubAck {
        packet_id: u16,
        codes: Vec<u8>,
    },
    UnsubAck {
        packet_id: u16,
        codes: Vec<u8>,
    },
    PingResp,
    /// MQTT 5 only; an MQTT 3 client is simply disconnected.
    Disconnect {
        reason: u8,
        text: Option<String>,
    },
}

/// Reads and writes one connection's packets: detects the version from
/// CONNECT, then uses that version's codec.
#[derive(Debug)]
pub(crate) struct Codec {
    inner: MqttCodec,
    max_packet_size: u32,
}

/// Why the bytes could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode a packet: {0}")]
    Encode(#[from] EncodeError),
    #[error("the first packet is not CONNECT")]
    NotConnect,
}

impl CodecError {
    /// A packet over the size limit (MQTT 5 reason 0x95).
    pub(crate) fn too_large(&self) -> bool {
        matches!(
            self,
            CodecError::Decode(DecodeError::MaxSizeExceeded { .. })
        )
    }
}

/// Whether `buffer` starts with a CONNECT naming `MQTT` at a protocol
/// level Sluice does not speak (answered with MQTT 3.1.1's CONNACK 0x01).
pub(crate) fn unsupported_level(buffer: &[u8]) -> bool {
    let Some(first) = buffer.first() else {
        return false;
    };
    if *first != 0x10 {
        return false;
    }
    let Some(length_bytes) = buffer
        .iter()
        .skip(1)
        .take(4)
        .position(|byte| byte & 0x80 == 0)
    else {
        return false;
    };
    let name = 1 + length_bytes + 1;
    buffer.get(name..name + 6) == Some(&b"\x00\x04MQTT"[..])
        && buffer
            .get(name + 6)
            .is_some_and(|level| !(3..=5).contains(level))
}

impl Codec {
    pub(crate) fn new(max_packet_size: u32) -> Codec {
        Codec {
            inner: MqttCodec::Version(rmqtt_codec::version::VersionCodec),
            max_packet_size,
        }
    }

    /// Limits what is sent to a client that announced a Maximum Packet
    /// Size (MQTT 5).
    pub(crate) fn limit_outbound(&mut self, size: u32) {
        if let MqttCodec::V5(codec) = &mut self.inner {
            codec.set_max_outbound_size(size);
        }
    }

    /// The next complete packet in `buffer`, consumed from it.
    ///
    /// # Errors
    /// A malformed packet, or a first packet that is not CONNECT.
    pub(crate) fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        loop {
            if matches!(self.inner, MqttCodec::Version(_))
                && let Some(length) = remaining_length(buffer)
                && length > self.max_packet_size
            {
                // The version codec waits for the whole CONNECT; refuse
                // one over the limit before reading it.
                return Err(DecodeError::MaxSizeExceeded {
                    size: length,
                    max: self.max_packet_size,
                }
                .into());
            }
            let Some((packet, _)) = self.inner.decode(buffer)? else {
                return Ok(None);
            };
            match packet {
                MqttPacket::Version(ProtocolVersion::MQTT3) => {
                    self.inner = MqttCodec::V3(v3::Codec::new(self.max_packet_size));
                }
                MqttPacket::Version(ProtocolVersion::MQTT5) => {
                    self.inner = MqttCodec::V5(v5::Codec::new(self.max_packet_size, 0));
                }
                MqttPacket::V3(packet) => return Ok(Some(from_v3(packet))),
                MqttPacket::V5(packet) => return Ok(Some(from_v5(packet))),
            }
        }
    }

    /// Appends `packet` to `out` in the connection's version.
    ///
    /// # Errors
    /// A packet over the client's Maximum Packet Size, or before CONNECT.
    pub(crate) fn encode(
        &mut self,
        packet: Outbound,
        out: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let packet = match &self.inner {
            MqttCodec::V3(_) => match to_v3(packet) {
                Some(packet) => MqttPacket::V3(packet),
                None => return Ok(()),
            },
            MqttCodec::V5(_) => MqttPacket::V5(to_v5(packet)),
            MqttCodec::Version(_) => return Err(CodecError::NotConnect),
        };
        self.inner.encode(packet, out)?;
        Ok(())
    }
}

/// The Remaining Length of the packet at the head of `buffer` (MQTT §2.2.3),
/// once its bytes are there.
fn remaining_length(buffer: &[u8]) -> Option<u32> {
    let mut value: u32 = 0;
    for (index, byte) in buffer.iter().skip(1).take(4).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn qos_of(qos: QoS) -> u8 {
    qos.value()
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn packet_id(id: u16) -> NonZeroU16 {
    // Outbound ids are allocated from 1; 0 never reaches here.
    NonZeroU16::new(id).unwrap_or(NonZeroU16::MIN)
}

fn text(value: &impl AsRef<str>) -> String {
    value.as_ref().to_owned()
}

fn from_v3(packet: v3::Packet) -> Inbound {
    match packet {
        v3::Packet::Connect(connect) => Inbound::Connect(Box::new(Connect {
            version: Version::V3(connect.protocol.level()),
            clean_start: connect.clean_session,
            keep_alive: connect.keep_alive,
            session_expiry_secs: 0,
            receive_max: u16::MAX,
            max_packet_size: None,
            client_id: text(&connect.client_id),
            username: connect.username.as_ref().map(text),
            password: connect.password.clone(),
            will: connect.last_will.as_ref().map(|will| Will {
                topic: text(&will.topic),
                payload: will.message.clone(),
                qos: qos_of(will.qos),
                retain: will.retain,
                delay_secs: 0,
                properties: Properties::default(),
            }),
            auth_method: None,
        })),
        v3::Packet::Publish(publish) => Inbound::Publish(Box::new(from_codec_publish(*publish))),
        v3::Packet::PublishAck { packet_id } => Inbound::PubAck(packet_id.get()),
        v3::Packet::PublishReceived { packet_id } => Inbound::PubRec(packet_id.get()),
        v3::Packet::PublishRelease { packet_id } => Inbound::PubRel(packet_id.get()),
        v3::Packet::PublishComplete { packet_id } => Inbound::PubComp(packet_id.get()),
        v3::Packet::Subscribe {
            packet_id,
            topic_filters,
        } => Inbound::Subscribe {
            packet_id: packet_id.get(),
            id: None,
            filters: topic_filters
                .iter()
                .map(|(filter, level)| {
                    (
                        text(filter),
                        SubscriptionOptions {
                            qos: qos_of(*level),
                            ..SubscriptionOptions::default()
                        },
                    )
                })
                .collect(),
        },
        v3::Packet::Unsubscribe {
            packet_id,
            topic_filters,
        } => Inbound::Unsubscribe {
            packet_id: packet_id.get(),
            filters: topic_filters.iter().map(text).collect(),
        },
        v3::Packet::PingRequest => Inbound::PingReq,
        v3::Packet::Disconnect => Inbound::Disconnect {
            reason: 0,
            session_expiry_secs: None,
        },
        v3::Packet::ConnectAck(_) => Inbound::ServerOnly("CONNACK"),
        v3::Packet::SubscribeAck { .. } => Inbound::ServerOnly("SUBACK"),
        v3::Packet::UnsubscribeAck { .. } => Inbound::ServerOnly("UNSUBACK"),
        v3::Packet::PingResponse => Inbound::ServerOnly("PINGRESP"),
    }
}

fn from_codec_publish(publish: rmqtt_codec::types::Publish) -> Publish {
    let properties = publish
        .properties
        .map(|p| Properties {
            expiry_secs: p.message_expiry_interval.map(NonZeroU32::get),
            content_type: p.content_type.as_ref().map(text),
            response_topic: p.response_topic.as_ref().map(text),
            correlation_data: p.correlation_data,
            user_properties: p
                .user_properties
                .iter()
                .map(|(k, v)| (text(k), text(v)))
                .collect(),
            utf8_payload: p.is_utf8_payload,
            topic_alias: p.topic_alias.map(NonZeroU16::get),
            subscription_ids: Vec::new(),
        })
        .unwrap_or_default();
    Publish {
        topic: text(&publish.topic),
        payload: publish.payload,
        qos: qos_of(publish.qos),
        retain: publish.retain,
        dup: publish.dup,
        packet_id: publish.packet_id.map(NonZeroU16::get),
        properties,
    }
}

fn from_v5(packet: v5::Packet) -> Inbound {
    match packet {
        v5::Packet::Connect(connect) => Inbound::Connect(Box::new(Connect {
            version: Version::V5,
            clean_start: connect.clean_start,
            keep_alive: connect.keep_alive,
            session_expiry_secs: connect.session_expiry_interval_secs,
            receive_max: connect.receive_max.map_or(u16::MAX, NonZeroU16::get),
            max_packet_size: connect.max_packet_size.map(NonZeroU32::get),
            client_id: text(&connect.client_id),
            username: connect.username.as_ref().map(text),
            password: connect.password.clone(),
            will: connect.last_will.as_ref().map(|will| Will {
                topic: text(&will.topic),
                payload: will.message.clone(),
                qos: qos_of(will.qos),
                retain: will.retain,
                delay_secs: will.will_delay_interval_sec.unwrap_or(0),
                properties: Properties {
                    expiry_secs: will.message_expiry_interval.map(NonZeroU32::get),
                    content_type: will.content_type.as_ref().map(text),
                    response_topic: will.response_topic.as_ref().map(text),
                    correlation_data: will.correlation_data.clone(),
                    user_properties: will
                        .user_properties
                        .iter()
                        .map(|(k, v)| (text(k), text(v)))
                        .collect(),
                    utf8_payload: will.is_utf8_payload.unwrap_or(false),
                    topic_alias: None,
                    subscription_ids: Vec::new(),
                },
            }),
            auth_method: connect.auth_method.as_ref().map(text),
        })),
        v5::Packet::Publish(publish) => Inbound::Publish(Box::new(from_codec_publish(*publish))),
        v5::Packet::PublishAck(ack) => Inbound::PubAck(ack.packet_id.get()),
        v5::Packet::PublishReceived(ack) => Inbound::PubRec(ack.packet_id.get()),
        v5::Packet::PublishRelease(ack) => Inbound::PubRel(ack.packet_id.get()),
        v5::Packet::PublishComplete(ack) => Inbound::PubComp(ack.packet_id.get()),
        v5::Packet::Subscribe(subscribe) => Inbound::Subscribe {
            packet_id: subscribe.packet_id.get(),
            id: subscribe.id.map(NonZeroU32::get),
            filters: subscribe
                .topic_filters
                .iter()
                .map(|(filter, options)| {
                    (
                        text(filter),
                        SubscriptionOptions {
                            qos: qos_of(options.qos),
                            no_local: options.no_local,
                            retain_as_published: options.retain_as_published,
                            retain_handling: options.retain_handling as u8,
                        },
                    )
                })
                .collect(),
        },
        v5::Packet::Unsubscribe(unsubscribe) => Inbound::Unsubscribe {
            packet_id: unsubscribe.packet_id.get(),
            filters: unsubscribe.topic_filters.iter().map(text).collect(),
        },
        v5::Packet::PingRequest => Inbound::PingReq,
        v5::Packet::Disconnect(disconnect) => Inbound::Disconnect {
            reason: u8::from(disconnect.reason_code),
            session_expiry_secs: disconnect.session_expiry_interval_secs,
        },
        v5::Packet::Auth(_) => Inbound::Auth,
        v5::Packet::ConnectAck(_) => Inbound::ServerOnly("CONNACK"),
        v5::Packet::SubscribeAck(_) => Inbound::ServerOnly("SUBACK"),
        v5::Packet::UnsubscribeAck(_) => Inbound::ServerOnly("UNSUBACK"),
        v5::Packet::PingResponse => Inbound::ServerOnly("PINGRESP"),
    }
}

fn to_codec_publish(publish: Publish, v5: bool) -> rmqtt_codec::types::Publish {
    let properties = v5.then(|| {
        let p = publish.properties;
        v5::PublishProperties {
            topic_alias: None,
            correlation_data: p.correlation_data,
            message_expiry_interval: p.expiry_secs.and_then(NonZeroU32::new),
            content_type: p.content_type.map(Into::into),
            user_properties: p
                .user_properties
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            is_utf8_payload: p.utf8_payload,
            response_topic: p.response_topic.map(Into::into),
            subscription_ids: p
                .subscription_ids
                .into_iter()
                .filter_map(NonZeroU32::new)
                .collect(),
        }
    });
    rmqtt_codec::types::Publish {
        dup: publish.dup,
        retain: publish.retain,
        qos: qos(publish.qos),
        topic: publish.topic.into(),
        packet_id: publish.packet_id.and_then(NonZeroU16::new),
        payload: publish.payload,
        properties,
    }
}

fn to_v3(packet: Outbound) -> Option<v3::Packet> {
    Some(match packet {
        Outbound::ConnAck(ack) => v3::Packet::ConnectAck(v3::ConnectAck {
            session_present: ack.session_present,
            return_code: match ack.code {
                ConnackCode::Success => v3::ConnectAckReason::ConnectionAccepted,
                ConnackCode::ClientIdentifierNotValid => v3::ConnectAckReason::IdentifierRejected,
                ConnackCode::BadUserNameOrPassword | ConnackCode::BadAuthenticationMethod => {
                    v3::ConnectAckReason::BadUserNameOrPassword
                }
                ConnackCode::NotAuthorized | ConnackCode::QosNotSupported => {
                    v3::ConnectAckReason::NotAuthorized
                }
            },
        }),
        Outbound::Publish(publish) => {
            v3::Packet::Publish(Box::new(to_codec_publish(*publish, false)))
        }
        Outbound::PubAck { packet_id: id, .. } => v3::Packet::PublishAck {
            packet_id: packet_id(id),
        },
        Outbound::PubRec { packet_id: id, .. } => v3::Packet::PublishReceived {
            packet_id: packet_id(id),
        },
        Outbound::PubComp { packet_id: id, .. } => v3::Packet::PublishComplete {
            packet_id: packet_id(id),
        },
        Outbound::SubAck {
            packet_id: id,
            codes,
        } => v3::Packet::SubscribeAck {
            packet_id: packet_id(id),
            status: codes
                .into_iter()
                .map(|code| {
                    if code < 0x80 {
                        v3::SubscribeReturnCode::Success(qos(code))
                    } else {
                        v3::SubscribeReturnCode::Failure
                    }
                })
                .collect(),
        },
        Outbound::UnsubAck { packet_id: id, .. } => v3::Packet::UnsubscribeAck {
            packet_id: packet_id(id),
        },
        Outbound::PingResp => v3::Packet::PingResponse,
        Outbound::Disconnect { .. } => return None,
    })
}

fn to_v5(packet: Outbound) -> v5::Packet {
    match packet {
        Outbound::ConnAck(ack) => v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
            session_present: ack.session_present,
            reason_code: match ack.code {
                ConnackCode::Success => v5::ConnectAckReason::Success,
                ConnackCode::ClientIdentifierNotValid => {
                    v5::ConnectAckReason::ClientIdentifierNotValid
                }
                ConnackCode::BadUserNameOrPassword => v5::ConnectAckReason::BadUserNameOrPassword,
                ConnackCode::NotAuthorized => v5::ConnectAckReason::NotAuthorized,
                ConnackCode::BadAuthenticationMethod => {
                    v5::ConnectAckReason::BadAuthenticationMethod
                }
                ConnackCode::QosNotSupported => v5::ConnectAckReason::QosNotSupported,
            },
            session_expiry_interval_secs: ack.session_expiry_secs,
            receive_max: NonZeroU16::new(ack.receive_max).unwrap_or(NonZeroU16::MAX),
            // As RabbitMQ: QoS 1 at most, both ways (docs/mqtt.md).
            max_qos: QoS::AtLeastOnce,
            max_packet_size: Some(ack.max_packet_size),
            assigned_client_id: ack.assigned_client_id.map(Into::into),
            topic_alias_max: ack.topic_alias_max,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            reason_string: ack.reason.map(Into::into),
            ..v5::ConnectAck::default()
        })),
        Outbound::Publish(publish) => {
            v5::Packet::Publish(Box::new(to_codec_publish(*publish, true)))
        }
        Outbound::PubAck {
            packet_id: id,
            reason,
        } => v5::Packet::PublishAck(v5::PublishAck {
            packet_id: packet_id(id),
            reason_code: v5::PublishAckReason::try_from(reason)
                .unwrap_or(v5::PublishAckReason::UnspecifiedError),
            ..v5::PublishAck::default()
        }),
        Outbound::PubRec {
            packet_id: id,
            reason,
        } => v5::Packet::PublishReceived(v5::PublishAck {
            packet_id: packet_id(id),
            reason_code: v5::PublishAckReason::try_from(reason)
                .unwrap_or(v5::PublishAckReason::UnspecifiedError),
            ..v5::PublishAck::default()
        }),
        Outbound::PubComp {
            packet_id: id,
            reason,
        } => v5::Packet::PublishComplete(v5::PublishAck2 {
            packet_id: packet_id(id),
            reason_code: v5::PublishAck2Reason::try_from(reason)
                .unwrap_or(v5::PublishAck2Reason::PacketIdNotFound),
            ..v5::PublishAck2::default()
        }),
        Outbound::SubAck {
            packet_id: id,
            codes,
        } => v5::Packet::SubscribeAck(v5::SubscribeAck {
            packet_id: packet_id(id),
            properties: Vec::new(),
            reason_string: None,
            status: codes
                .into_iter()
                .map(|code| {
                    v5::SubscribeAckReason::try_from(code)
                        .unwrap_or(v5::SubscribeAckReason::UnspecifiedError)
                })
                .collect(),
        }),
        Outbound::UnsubAck {
            packet_id: id,
            codes,
        } => v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id: packet_id(id),
            properties: Vec::new(),
            reason_string: None,
            status: codes
                .into_iter()
                .map(|code| {
                    v5::UnsubscribeAckReason::try_from(code)
                        .unwrap_or(v5::UnsubscribeAckReason::UnspecifiedError)
                })
                .collect(),
        }),
        Outbound::PingResp => v5::Packet::PingResponse,
        Outbound::Disconnect { reason, text } => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: v5::DisconnectReasonCode::try_from(reason)
                .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError),
            reason_string: text.map(Into::into),
            ..v5::Disconnect::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONNECT_311: &[u8] = b"\x10\x12\x00\x04MQTT\x04\x02\x00\x3c\x00\x06client";

    #[test]
    fn a_311_connect_then_ping_decode_and_a_connack_encodes() {
        let mut codec = Codec::new(1 << 20);
        let mut buffer = BytesMut::from(CONNECT_311);
        buffer.extend_from_slice(b"\xc0\x00");
        let Some(Inbound::Connect(connect)) = codec.decode(&mut buffer).expect("decodes") else {
            panic!("not a CONNECT");
        };
        assert_eq!(connect.version, Version::V3(4));
        assert!(connect.clean_start);
        assert_eq!(connect.client_id, "client");
        assert!(matches!(
            codec.decode(&mut buffer).expect("decodes"),
            Some(Inbound::PingReq)
        ));
        let mut out = BytesMut::new();
        codec
            .encode(
                Outbound::ConnAck(Box::new(ConnAck {
                    session_present: true,
                    code: ConnackCode::Success,
                    reason: None,
                    assigned_client_id: None,
                    session_expiry_secs: None,
                    receive_max: 10,
                    topic_alias_max: 0,
                    max_packet_size: 1 << 20,
                })),
                &mut out,
            )
            .expect("encodes");
        assert_eq!(&out[..], b"\x20\x02\x01\x00");
    }

    #[test]
    fn a_connect_cut_at_every_byte_waits_and_garbage_is_an_error() {
        for cut in 0..CONNECT_311.len() {
            let mut codec = Codec::new(1 << 20);
            let mut buffer = BytesMut::from(&CONNECT_311[..cut]);
            assert!(
                matches!(codec.decode(&mut buffer), Ok(None) | Err(_)),
                "cut at {cut}"
            );
        }
        let mut codec = Codec::new(1 << 20);
        let mut buffer = BytesMut::from(&b"\x30\x05\x00\x01a"[..]);
        assert!(codec.decode(&mut buffer).is_err(), "PUBLISH before CONNECT");
    }

    #[test]
    fn packets_over_the_limit_are_refused_before_they_are_read() {
        let mut codec = Codec::new(64);
        let mut buffer = BytesMut::from(CONNECT_311);
        codec.decode(&mut buffer).expect("CONNECT fits");
        let mut buffer = BytesMut::from(&b"\x30\xff\xff\x03"[..]);
        assert!(codec.decode(&mut buffer).is_err());
        let mut fresh = Codec::new(64);
        let mut buffer = BytesMut::from(&b"\x10\xff\x01"[..]);
        assert!(
            fresh.decode(&mut buffer).is_err(),
            "a CONNECT over the limit too"
        );
    }
}
