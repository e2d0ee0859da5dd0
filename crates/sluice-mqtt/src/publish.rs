//! PUBLISH from a client: topic aliases, permissions, retained messages,
//! routing through the topic exchange, and the acknowledgement (PUBACK for
//! QoS 1, PUBREC then PUBCOMP for QoS 2, each once the queues it reached
//! hold it durably). Also retained messages sent to a new subscription,
//! and will messages.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::Broker;
use sluice_core::messaging::VirtualHost;
use sluice_core::permissions::Access;
use sluice_core::retained::RetainedMessage;

use crate::connection::{Connection, Violation};
use crate::message;
use crate::packets::{Outbound, Publish, SubscriptionOptions, Version, Will};
use crate::session::now_ms;
use crate::topic;

/// Why a publish was not routed: the MQTT 5 reason code.
struct Refused(u8);

impl Connection {
    pub(crate) fn publish(&mut self, mut publish: Publish) -> Result<(), Violation> {
        let v5 = self.version == Version::V5;
        if let Some(alias) = publish.properties.topic_alias.take() {
            if alias == 0 || alias > self.shared.options.topic_alias_max {
                return Err(Violation::new(
                    0x94,
                    format!("topic alias {alias} is out of range"),
                ));
            }
            if publish.topic.is_empty() {
                publish.topic =
                    self.aliases.get(&alias).cloned().ok_or_else(|| {
                        Violation::new(0x82, format!("unknown topic alias {alias}"))
                    })?;
            } else {
                self.aliases.insert(alias, publish.topic.clone());
            }
        }
        if let Err(invalid) = topic::validate_name(&publish.topic) {
            return Err(Violation::new(0x90, invalid.0));
        }
        let packet_id = publish.packet_id.unwrap_or(0);
        if publish.qos == 2 && self.qos2_received.contains(&packet_id) {
            // A resent QoS 2 publish not yet released: not routed again.
            self.burst_acks.push(Outbound::PubRec {
                packet_id,
                reason: 0,
            });
            return Ok(());
        }
        let reason = match route(
            &self.broker,
            &self.vhost,
            &self.shared.options.exchange,
            &self.user,
            &publish,
        ) {
            Ok((queues, acks)) => {
                self.burst_syncs.merge(acks);
                if queues == 0 { 0x10 } else { 0 }
            }
            Err(Refused(code)) => {
                if !v5 {
                    // MQTT 3 has no way to refuse a publish but to close.
                    return Err(Violation::new(code, "publish refused"));
                }
                code
            }
        };
        match publish.qos {
            0 => {}
            1 => self.burst_acks.push(Outbound::PubAck { packet_id, reason }),
            _ => {
                if reason < 0x80 {
                    self.qos2_received.insert(packet_id);
                }
                self.burst_acks.push(Outbound::PubRec { packet_id, reason });
            }
        }
        Ok(())
    }

    /// Retained messages matching SUBSCRIBE's filters, sent after SUBACK
    /// (MQTT 5 Retain Handling 2 asks for none; shared subscriptions get
    /// none).
    pub(crate) fn send_retained(
        &mut self,
        filters: &[(String, SubscriptionOptions)],
        id: Option<u32>,
    ) {
        let now = now_ms();
        for (text, options) in filters {
            if options.retain_handling == 2
                || text.starts_with("$share/")
                || !self.session.has_subscription(text)
            {
                continue;
            }
            let found = self.broker.retained().matching(
                self.vhost.name(),
                |t| topic::matches(text, t),
                now,
            );
            for (_, retained, _) in found {
                let qos = message::published_qos(&retained).min(options.qos).min(1);
                let mut publish = message::to_publish(&retained, qos, true, now);
                publish.properties.subscription_ids = id.into_iter().collect();
                if qos > 0 {
                    publish.packet_id = Some(self.session.retained_packet_id());
                }
                self.write(Outbound::Publish(Box::new(publish)));
            }
        }
    }
}

/// Routes `publish` as `user` would: the number of queues it reached and
/// what a durable acknowledgement waits for.
fn route(
    broker: &Broker,
    vhost: &VirtualHost,
    exchange: &str,
    user: &str,
    publish: &Publish,
) -> Result<(usize, sluice_core::Acks), Refused> {
    let now = now_ms();
    let message = message::to_message(exchange, publish, now);
    let permissions = broker.permissions();
    if !permissions.allows(user, vhost.name(), Access::Write, exchange)
        || !permissions.allows_topic(
            user,
            vhost.name(),
            exchange,
            Access::Write,
            message.routing_key.as_str(),
        )
    {
        tracing::info!(user, topic = %publish.topic, "publish refused: no permission");
        return Err(Refused(0x87));
    }
    if publish.retain {
        let value = (!publish.payload.is_empty())
            .then(|| message.encode().ok())
            .flatten()
            .map(|encoded| RetainedMessage {
                message: encoded,
                expires_at_ms: publish
                    .properties
                    .expiry_secs
                    .map(|secs| now + i64::from(secs) * 1000),
            });
        // A commit (through the quorum on a cluster) before the publish
        // is routed: a subscriber that sees the message also finds it
        // retained.
        let stored = tokio::task::block_in_place(|| {
            broker.set_retained(vhost.name(), &publish.topic, value)
        });
        if let Err(error) = stored {
            tracing::warn!(topic = %publish.topic, %error, "cannot store a retained message");
            return Err(Refused(0x80));
        }
    }
    match vhost.publish(exchange, message) {
        Ok(outcome) if outcome.rejected => Err(Refused(0x97)),
        Ok(outcome) => Ok((outcome.queues, outcome.acks)),
        Err(error) => {
            tracing::info!(topic = %publish.topic, %error, "publish refused");
            Err(Refused(0x80))
        }
    }
}

/// Publishes the will of a connection that ended without DISCONNECT: at
/// once, or after MQTT 5's Will Delay Interval unless the client is back
/// by then.
pub(crate) fn send_will(connection: &Connection, will: Will) {
    let publish = Publish {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        dup: false,
        packet_id: None,
        properties: will.properties,
    };
    let broker = Arc::clone(&connection.broker);
    let vhost = Arc::clone(&connection.vhost);
    let shared = Arc::clone(&connection.shared);
    let user = connection.user.clone();
    let client_id = connection.client_id.clone();
    // Sent when the delay passes or the session ends, whichever is first.
    let delay = will.delay_secs.min(connection.session_expiry_secs);
    let send = move || {
        if topic::validate_name(&publish.topic).is_err() {
            return;
        }
        match route(&broker, &vhost, &shared.options.exchange, &user, &publish) {
            Ok(_) => {
                tracing::debug!(client_id = %client_id, topic = %publish.topic, "will published")
            }
            Err(Refused(code)) => {
                tracing::info!(client_id = %client_id, code, "will not published");
            }
        }
    };
    if delay == 0 {
        send();
        return;
    }
    let vhost_name = connection.vhost.name().to_owned();
    let client = connection.client_id.clone();
    let shared = Arc::clone(&connection.shared);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
        if shared.clients.connected(&vhost_name, &client) {
            tracing::debug!(client_id = %client, "will dropped: the client is back");
            return;
        }
        send();
    });
}
