//! `queue.declare`, `queue.bind`, `queue.unbind`, `queue.purge`, `queue.delete`.

use amq_protocol::protocol::{AMQPClass, queue};
use sluice_core::messaging::{Destination, QueueOptions, short};

use sluice_core::acls::Operation;
use sluice_core::permissions::Access;

use crate::channel::{Channel, Context};
use crate::errors::AmqpError;

pub(crate) fn handle(
    ctx: &mut Context<'_>,
    channel: &mut Channel,
    method: queue::AMQPMethod,
) -> Result<(), AmqpError> {
    let id = channel.id;
    let reply = |ctx: &mut Context<'_>, nowait: bool, method: queue::AMQPMethod| {
        if !nowait {
            ctx.reply(id, AMQPClass::Queue(method));
        }
    };
    match method {
        queue::AMQPMethod::Declare(m) => {
            let server_named = m.queue.as_str().is_empty();
            if !m.passive {
                // A server-named queue is checked by its name once made.
                if !server_named {
                    ctx.check(Access::Configure, "queue", m.queue.as_str())
                        .map_err(|e| e.during(50, 10))?;
                }
                // RabbitMQ's dead-letter rule: read on the queue, write on
                // the exchange its dead letters go to.
                if let Some(dlx) = string_argument(&m.arguments, "x-dead-letter-exchange") {
                    if !server_named {
                        ctx.check(Access::Read, "queue", m.queue.as_str())
                            .map_err(|e| e.during(50, 10))?;
                    }
                    ctx.check(Access::Write, "exchange", &dlx)
                        .map_err(|e| e.during(50, 10))?;
                }
                // A stream is a topic: opening one needs DESCRIBE on it,
                // making one CREATE, as for a Kafka client.
                if !server_named
                    && string_argument(&m.arguments, "x-queue-type").as_deref() == Some("stream")
                {
                    let operation = if ctx.vhost.topic_exists(m.queue.as_str()) {
                        Operation::Describe
                    } else {
                        Operation::Create
                    };
                    ctx.check_kafka(operation, m.queue.as_str())
                        .map_err(|e| e.during(50, 10))?;
                }
            }
            let dead_letters =
                !m.passive && string_argument(&m.arguments, "x-dead-letter-exchange").is_some();
            let (name, messages, consumers) = ctx
                .vhost
                .declare_queue(
                    m.queue.as_str(),
                    QueueOptions {
                        durable: m.durable,
                        exclusive_owner: m.exclusive.then_some(ctx.connection),
                        auto_delete: m.auto_delete,
                        arguments: m.arguments,
                    },
                    m.passive,
                    ctx.connection,
                )
                .map_err(|e| AmqpError::from(e).during(50, 10))?;
            if server_named && !m.passive {
                let checked = ctx.check(Access::Configure, "queue", &name).and_then(|()| {
                    if dead_letters {
                        ctx.check(Access::Read, "queue", &name)
                    } else {
                        Ok(())
                    }
                });
                if let Err(error) = checked {
                    // Made only to learn its name: it goes again.
                    let _ = ctx.vhost.delete_queue(&name, false, false, ctx.connection);
                    return Err(error.during(50, 10));
                }
            }
            reply(
                ctx,
                m.nowait,
                queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                    queue: short(&name),
                    message_count: u32::try_from(messages).unwrap_or(u32::MAX),
                    consumer_count: u32::try_from(consumers).unwrap_or(u32::MAX),
                }),
            );
        }
        queue::AMQPMethod::Bind(m) => {
            binding_allowed(
                ctx,
                m.queue.as_str(),
                m.exchange.as_str(),
                m.routing_key.as_str(),
            )
            .map_err(|e| e.during(50, 20))?;
            // A stream bound to an exchange takes what is published there
            // into its topic: the binder needs WRITE on the topic.
            stream_check(ctx, m.queue.as_str(), Operation::Write).map_err(|e| e.during(50, 20))?;
            ctx.vhost
                .bind(
                    m.exchange.as_str(),
                    Destination::Queue(m.queue.as_str().to_owned()),
                    m.routing_key.as_str(),
                    &m.arguments,
                    ctx.connection,
                )
                .map_err(|e| AmqpError::from(e).during(50, 20))?;
            reply(ctx, m.nowait, queue::AMQPMethod::BindOk(queue::BindOk {}));
        }
        queue::AMQPMethod::Unbind(m) => {
            binding_allowed(
                ctx,
                m.queue.as_str(),
                m.exchange.as_str(),
                m.routing_key.as_str(),
            )
            .map_err(|e| e.during(50, 50))?;
            ctx.vhost
                .unbind(
                    m.exchange.as_str(),
                    Destination::Queue(m.queue.as_str().to_owned()),
                    m.routing_key.as_str(),
                    &m.arguments,
                    ctx.connection,
                )
                .map_err(|e| AmqpError::from(e).during(50, 50))?;
            reply(ctx, false, queue::AMQPMethod::UnbindOk(queue::UnbindOk {}));
        }
        queue::AMQPMethod::Purge(m) => {
            ctx.check(Access::Read, "queue", m.queue.as_str())
                .map_err(|e| e.during(50, 30))?;
            let count = ctx
                .vhost
                .purge_queue(m.queue.as_str(), ctx.connection)
                .map_err(|e| AmqpError::from(e).during(50, 30))?;
            reply(
                ctx,
                m.nowait,
                queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                    message_count: u32::try_from(count).unwrap_or(u32::MAX),
                }),
            );
        }
        queue::AMQPMethod::Delete(m) => {
            ctx.check(Access::Configure, "queue", m.queue.as_str())
                .map_err(|e| e.during(50, 40))?;
            // Deleting a stream deletes its topic.
            stream_check(ctx, m.queue.as_str(), Operation::Delete).map_err(|e| e.during(50, 40))?;
            let count = ctx
                .vhost
                .delete_queue(m.queue.as_str(), m.if_unused, m.if_empty, ctx.connection)
                .map_err(|e| AmqpError::from(e).during(50, 40))?;
            reply(
                ctx,
                m.nowait,
                queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                    message_count: u32::try_from(count).unwrap_or(u32::MAX),
                }),
            );
        }
        other => return Err(crate::handlers::unexpected_method(&AMQPClass::Queue(other))),
    }
    Ok(())
}

/// The bridge's rule for a stream queue: `operation` on its topic in the
/// Kafka ACLs (nothing for another queue, or without `kafka.acls`).
pub(crate) fn stream_check(
    ctx: &Context<'_>,
    queue: &str,
    operation: Operation,
) -> Result<(), AmqpError> {
    if ctx.kafka.is_none() {
        return Ok(());
    }
    match ctx
        .vhost
        .queue(queue)
        .and_then(|q| q.stream_topic().cloned())
    {
        Some(topic) => ctx.check_kafka(operation, topic.name()),
        None => Ok(()),
    }
}

/// RabbitMQ's rule for queue bindings: write on the queue, read on the
/// exchange (and, on a topic exchange, topic read permission for the key).
fn binding_allowed(
    ctx: &Context<'_>,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), AmqpError> {
    ctx.check(Access::Write, "queue", queue)?;
    ctx.check(Access::Read, "exchange", exchange)?;
    ctx.check_topic(Access::Read, exchange, routing_key)
}

/// A string argument of a declaration (AMQP long or short string).
pub(crate) fn string_argument(
    arguments: &amq_protocol::types::FieldTable,
    key: &str,
) -> Option<String> {
    use amq_protocol::types::AMQPValue;
    match arguments.inner().get(key)? {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}
