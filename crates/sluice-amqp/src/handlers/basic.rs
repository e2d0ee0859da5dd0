//! The `basic` class: qos, consume, cancel, publish, get, ack, nack,
//! reject, recover; and writing deliveries out.

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::FieldTable;
use sluice_core::messaging::{
    ConsumerSpec, Credit, Delivery, Message, StreamStart, integer_value, short,
};

use sluice_core::permissions::Access;

use crate::channel::{Channel, Consumer, Context, NO_ACK_WINDOW, Settlement, TxAction, Unacked};
use crate::errors::{AmqpError, NO_ROUTE, NOT_ALLOWED, NOT_IMPLEMENTED, PRECONDITION_FAILED};
use crate::frames;

pub(crate) fn handle(
    ctx: &mut Context<'_>,
    channel: &mut Channel,
    method: basic::AMQPMethod,
) -> Result<(), AmqpError> {
    match method {
        basic::AMQPMethod::Qos(m) => {
            if m.global {
                channel
                    .channel_credit
                    .set_limit(u32::from(m.prefetch_count));
            } else {
                channel.prefetch = m.prefetch_count;
            }
            ctx.reply(
                channel.id,
                AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
            );
        }
        basic::AMQPMethod::Consume(m) => consume(ctx, channel, m)?,
        basic::AMQPMethod::Cancel(m) => {
            if let Some(consumer) = channel.consumers.remove(m.consumer_tag.as_str()) {
                let (last, dead) = ctx.vhost.remove_consumer(
                    &consumer.queue,
                    channel.key,
                    m.consumer_tag.as_str(),
                );
                ctx.vhost.dead_letter(dead);
                if last {
                    ctx.vhost.auto_delete_queue(&consumer.queue)?;
                }
            }
            if !m.nowait {
                ctx.reply(
                    channel.id,
                    AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: m.consumer_tag,
                    })),
                );
            }
        }
        basic::AMQPMethod::Publish(m) => channel.start_publish(m),
        basic::AMQPMethod::Get(m) => get(ctx, channel, m)?,
        basic::AMQPMethod::Ack(m) => {
            if let Some(actions) = channel.tx.as_mut() {
                actions.push(TxAction::Ack(m.delivery_tag, m.multiple));
                return Ok(());
            }
            let taken = channel
                .take_unacked(m.delivery_tag, m.multiple)
                .map_err(|e| e.during(60, 80))?;
            Channel::settle(ctx, taken, Settlement::Ack)?;
        }
        basic::AMQPMethod::Nack(m) => {
            if let Some(actions) = channel.tx.as_mut() {
                actions.push(TxAction::Reject(m.delivery_tag, m.multiple, m.requeue));
                return Ok(());
            }
            let taken = channel
                .take_unacked(m.delivery_tag, m.multiple)
                .map_err(|e| e.during(60, 120))?;
            Channel::settle(ctx, taken, Settlement::Reject { requeue: m.requeue })?;
        }
        basic::AMQPMethod::Reject(m) => {
            if let Some(actions) = channel.tx.as_mut() {
                actions.push(TxAction::Reject(m.delivery_tag, false, m.requeue));
                return Ok(());
            }
            let taken = channel
                .take_unacked(m.delivery_tag, false)
                .map_err(|e| e.during(60, 90))?;
            Channel::settle(ctx, taken, Settlement::Reject { requeue: m.requeue })?;
        }
        basic::AMQPMethod::Recover(m) => {
            recover(ctx, channel, m.requeue)?;
            ctx.reply(
                channel.id,
                AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
            );
        }
        basic::AMQPMethod::RecoverAsync(m) => recover(ctx, channel, m.requeue)?,
        other => return Err(crate::handlers::unexpected_method(&AMQPClass::Basic(other))),
    }
    Ok(())
}

fn recover(ctx: &mut Context<'_>, channel: &mut Channel, requeue: bool) -> Result<(), AmqpError> {
    if !requeue {
        return Err(AmqpError::connection(NOT_IMPLEMENTED, "requeue=false").during(60, 110));
    }
    let taken = channel.take_unacked(0, true)?;
    Channel::settle(ctx, taken, Settlement::Reject { requeue: true })
}

fn consume(
    ctx: &mut Context<'_>,
    channel: &mut Channel,
    m: basic::Consume,
) -> Result<(), AmqpError> {
    ctx.check(Access::Read, "queue", m.queue.as_str())
        .map_err(|e| e.during(60, 20))?;
    let queue = ctx
        .vhost
        .usable_queue(m.queue.as_str(), ctx.connection)
        .map_err(|e| AmqpError::from(e).during(60, 20))?;
    // Reading a stream reads its topic: READ in the Kafka ACLs.
    if let Some(topic) = queue.stream_topic() {
        ctx.check_kafka(sluice_core::acls::Operation::Read, topic.name())
            .map_err(|e| e.during(60, 20))?;
    }
    let tag: Arc<str> = if m.consumer_tag.as_str().is_empty() {
        Arc::from(
            format!(
                "amq.ctag-{}-{}",
                channel.key,
                channel.next_delivery_tag + channel.consumers.len() as u64
            )
            .as_str(),
        )
    } else {
        Arc::from(m.consumer_tag.as_str())
    };
    if channel.consumers.contains_key(&tag) {
        return Err(AmqpError::connection(
            NOT_ALLOWED,
            format!("attempt to reuse consumer tag '{tag}'"),
        )
        .during(60, 20));
    }
    let priority = consumer_priority(&m.arguments)?;
    let stream_start = match queue.stream_topic() {
        None => None,
        Some(_) => {
            if m.no_ack {
                return Err(AmqpError::channel(
                    PRECONDITION_FAILED,
                    format!(
                        "stream queue '{}' in vhost '{}' needs manual acknowledgement (no_ack=false)",
                        queue.name(),
                        ctx.vhost.name()
                    ),
                )
                .during(60, 20));
            }
            if channel.prefetch == 0 {
                return Err(AmqpError::channel(
                    PRECONDITION_FAILED,
                    format!(
                        "consumer prefetch count is not set for stream queue '{}' in vhost '{}'",
                        queue.name(),
                        ctx.vhost.name()
                    ),
                )
                .during(60, 20));
            }
            let start = StreamStart::parse(m.arguments.inner().get("x-stream-offset"))
                .map_err(|e| AmqpError::from(e).during(60, 20))?;
            Some(start)
        }
    };
    let limit = if m.no_ack {
        NO_ACK_WINDOW
    } else {
        u32::from(channel.prefetch)
    };
    let credit = Credit::new(limit, Some(Arc::clone(&channel.channel_credit)));
    let spec = ConsumerSpec {
        tag: Arc::clone(&tag),
        channel: channel.key,
        connection: ctx.connection,
        no_ack: m.no_ack,
        exclusive: m.exclusive,
        priority,
        credit: Arc::clone(&credit),
        sink: ctx.events.clone(),
        stream_start,
    };
    channel.consumers.insert(
        Arc::clone(&tag),
        Consumer {
            queue: Arc::clone(&queue),
            no_ack: m.no_ack,
            credit,
        },
    );
    // consume-ok goes out before any delivery (they are dispatched later
    // in this burst, after the reply is written).
    if !m.nowait {
        ctx.reply(
            channel.id,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: short(&tag),
            })),
        );
    }
    match queue.add_consumer(spec) {
        Ok(dead) => ctx.vhost.dead_letter(dead),
        Err(error) => {
            channel.consumers.remove(&tag);
            return Err(AmqpError::from(error).during(60, 20));
        }
    }
    Ok(())
}

fn consumer_priority(arguments: &FieldTable) -> Result<i32, AmqpError> {
    match arguments.inner().get("x-priority") {
        None => Ok(0),
        Some(value) => integer_value(value)
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| {
                AmqpError::channel(
                    PRECONDITION_FAILED,
                    format!("invalid arg 'x-priority' for consumer: {value:?}"),
                )
                .during(60, 20)
            }),
    }
}

fn get(ctx: &mut Context<'_>, channel: &mut Channel, m: basic::Get) -> Result<(), AmqpError> {
    ctx.check(Access::Read, "queue", m.queue.as_str())
        .map_err(|e| e.during(60, 70))?;
    let queue = ctx
        .vhost
        .usable_queue(m.queue.as_str(), ctx.connection)
        .map_err(|e| AmqpError::from(e).during(60, 70))?;
    let (taken, dead) = queue.get(m.no_ack)?;
    ctx.vhost.dead_letter(dead);
    match taken {
        None => ctx.reply(
            channel.id,
            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
        ),
        Some((seq, message, redelivered, remaining)) => {
            let unacked = (!m.no_ack).then(|| Unacked {
                queue: Arc::clone(&queue),
                seq,
                credit: None,
            });
            let tag = channel.track_delivery(unacked);
            ctx.reply(
                channel.id,
                AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                    delivery_tag: tag,
                    redelivered,
                    exchange: message.exchange.clone(),
                    routing_key: message.routing_key.clone(),
                    message_count: u32::try_from(remaining).unwrap_or(u32::MAX),
                })),
            );
            frames::put_content(
                ctx.out,
                channel.id,
                &message.properties,
                &message.body,
                ctx.frame_max,
            );
        }
    }
    Ok(())
}

/// A publish whose content is complete: route it, confirm it, return it
/// when mandatory and unroutable.
pub(crate) fn publish(
    ctx: &mut Context<'_>,
    channel: &mut Channel,
    method: basic::Publish,
    message: Message,
) -> Result<(), AmqpError> {
    // RabbitMQ dropped `immediate` in 3.0 and closes the connection when a
    // publish asks for it (rabbit_channel raises a hard not_implemented).
    if method.immediate {
        return Err(AmqpError::connection(NOT_IMPLEMENTED, "immediate=true").during(60, 40));
    }
    ctx.check(Access::Write, "exchange", method.exchange.as_str())
        .and_then(|()| {
            ctx.check_topic(
                Access::Write,
                method.exchange.as_str(),
                method.routing_key.as_str(),
            )
        })
        .map_err(|e| e.during(60, 40))?;
    // Through the default exchange straight into a stream: WRITE on its
    // topic (through another exchange, the binding was checked).
    if method.exchange.as_str().is_empty() {
        crate::handlers::queue::stream_check(
            ctx,
            method.routing_key.as_str(),
            sluice_core::acls::Operation::Write,
        )
        .map_err(|e| e.during(60, 40))?;
    }
    // RabbitMQ's validated user-id: a publisher may not claim another user.
    if let Some(user_id) = message.properties.user_id()
        && user_id.as_str() != ctx.user
    {
        return Err(AmqpError::channel(
            PRECONDITION_FAILED,
            format!(
                "user_id property set to '{}' but authenticated user was '{}'",
                user_id.as_str(),
                ctx.user
            ),
        )
        .during(60, 40));
    }
    if let Some(actions) = channel.tx.as_mut() {
        // Checked now so that a bad publish fails the channel at once.
        if ctx.vhost.exchange(method.exchange.as_str()).is_none() {
            return Err(AmqpError::channel(
                crate::errors::NOT_FOUND,
                format!(
                    "no exchange '{}' in vhost '{}'",
                    method.exchange.as_str(),
                    ctx.vhost.name()
                ),
            )
            .during(60, 40));
        }
        actions.push(TxAction::Publish(Box::new((method, message))));
        return Ok(());
    }
    let returned = method.mandatory.then(|| message.clone());
    let outcome = ctx
        .vhost
        .publish(method.exchange.as_str(), message)
        .map_err(|e| AmqpError::from(e).during(60, 40))?;
    if outcome.queues == 0
        && let Some(message) = returned
    {
        return_message(ctx, channel.id, &method, &message);
    }
    if let Some(confirms) = channel.confirms.as_mut() {
        confirms.published(outcome.acks, outcome.rejected);
    }
    Ok(())
}

pub(crate) fn return_message(
    ctx: &mut Context<'_>,
    channel: u16,
    method: &basic::Publish,
    message: &Message,
) {
    ctx.reply(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
            reply_code: NO_ROUTE,
            reply_text: "NO_ROUTE".into(),
            exchange: method.exchange.clone(),
            routing_key: method.routing_key.clone(),
        })),
    );
    frames::put_content(
        ctx.out,
        channel,
        &message.properties,
        &message.body,
        ctx.frame_max,
    );
}

/// Writes a delivery from a queue to the client. Returns false when the
/// channel no longer has the consumer (the message goes back).
pub(crate) fn deliver(ctx: &mut Context<'_>, channel: &mut Channel, delivery: Delivery) -> bool {
    let Some(consumer) = channel.consumers.get(&delivery.consumer_tag) else {
        return false;
    };
    let no_ack = consumer.no_ack;
    let credit = Arc::clone(&consumer.credit);
    let unacked = (!no_ack).then(|| Unacked {
        queue: Arc::clone(&delivery.queue),
        seq: delivery.seq,
        credit: Some(Arc::clone(&credit)),
    });
    let tag = channel.track_delivery(unacked);
    frames::put_method(
        ctx.out,
        channel.id,
        AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: short(&delivery.consumer_tag),
            delivery_tag: tag,
            redelivered: delivery.redelivered,
            exchange: delivery.message.exchange.clone(),
            routing_key: delivery.message.routing_key.clone(),
        })),
    );
    frames::put_content(
        ctx.out,
        channel.id,
        &delivery.message.properties,
        &delivery.message.body,
        ctx.frame_max,
    );
    if no_ack {
        // The window of a no-ack consumer counts deliveries not yet handed
        // to the socket writer.
        credit.release(1);
        ctx.dispatch_later(&delivery.queue);
    }
    true
}
