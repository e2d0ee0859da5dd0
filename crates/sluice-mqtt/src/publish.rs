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
use tokio::sync::oneshot;

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
        if topic::to_amqp(&publish.topic).len() > 255 {
            return Err(Violation::new(
                0x90,
                "a topic longer than a routing key (255 bytes)",
            ));
        }
        if v5 && publish.qos > 1 {
            // CONNACK said Maximum QoS 1 (MQTT 5 §3.3.1.2).
            return Err(Violation::new(
                0x9B,
                "QoS 2 is above the server's Maximum QoS",
            ));
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
            &self.client_id,
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
            let found = self.broker.retained().matching(
                self.vhost.name(),
                |t| topic::matches(text, t),
                now,
            );
            for (_, retained, _) in found {
                let mut qos = message::published_qos(&retained).min(options.qos).min(1);
                let mut packet_id = None;
                if qos > 0 {
                    packet_id = self.session.retained_packet_id();
                    if packet_id.is_none() {
                        // The client's window is full of QoS 1 messages.
                        qos = 0;
                    }
                }
                let mut publish = message::to_publish(&retained, qos, true, now);
                publish.properties.subscription_ids = id.into_iter().collect();
                publish.packet_id = packet_id;
                let sent = self.encode(Outbound::Publish(Box::new(publish)));
                if let Err(error) = sent {
                    tracing::debug!(%error, "a retained message was not sent");
                    if let Some(id) = packet_id {
                        self.session.forget_packet_id(id);
                    }
                }
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
    client_id: &str,
    publish: &Publish,
) -> Result<(usize, sluice_core::Acks), Refused> {
    let now = now_ms();
    let message = message::to_message(exchange, publish, now, client_id);
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

/// Publishes the will of a connection that ended without a normal
/// DISCONNECT: at once, or (MQTT 5's Will Delay Interval, bounded by the
/// session expiry) when the delay passes; the trigger returned lets the
/// client's next connection drop it (back in time) or send it at once
/// (back with a clean start: the session ended).
pub(crate) fn send_will(connection: &Connection, will: Will) -> Option<oneshot::Sender<bool>> {
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
    let delay = will.delay_secs.min(connection.session_expiry_secs);
    let send = move || {
        if topic::validate_name(&publish.topic).is_err() {
            tracing::info!(client_id = %client_id, "will not published: invalid topic");
            return;
        }
        let exchange = &shared.options.exchange;
        match route(&broker, &vhost, exchange, &user, &client_id, &publish) {
            Ok(_) => {
                tracing::debug!(client_id = %client_id, topic = %publish.topic, "will published");
            }
            Err(Refused(code)) => {
                tracing::info!(client_id = %client_id, code, "will not published");
            }
        }
    };
    if delay == 0 {
        send();
        return None;
    }
    let (trigger, triggered) = oneshot::channel();
    tokio::spawn(async move {
        let sleep = tokio::time::sleep(Duration::from_secs(u64::from(delay)));
        tokio::pin!(sleep);
        tokio::select! {
            () = &mut sleep => send(),
            now = triggered => match now {
                Ok(true) => send(),
                Ok(false) => tracing::debug!("will dropped: the client came back"),
                // Taken over: the session goes on; the delay decides.
                Err(_) => {
                    sleep.await;
                    send();
                }
            },
        }
    });
    Some(trigger)
}
