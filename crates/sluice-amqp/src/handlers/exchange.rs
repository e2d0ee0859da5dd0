//! `exchange.declare`, `exchange.delete`, `exchange.bind`, `exchange.unbind`.

use amq_protocol::protocol::{AMQPClass, exchange};
use sluice_core::messaging::{Destination, ExchangeOptions};

use sluice_core::permissions::Access;

use crate::channel::{Channel, Context};
use crate::errors::AmqpError;

pub(crate) fn handle(
    ctx: &mut Context<'_>,
    channel: &mut Channel,
    method: exchange::AMQPMethod,
) -> Result<(), AmqpError> {
    let reply = |ctx: &mut Context<'_>, nowait: bool, method: exchange::AMQPMethod| {
        if !nowait {
            ctx.reply(channel.id, AMQPClass::Exchange(method));
        }
    };
    match method {
        exchange::AMQPMethod::Declare(m) => {
            if !m.passive {
                ctx.check(Access::Configure, "exchange", m.exchange.as_str())
                    .map_err(|e| e.during(40, 10))?;
                // RabbitMQ's alternate-exchange rule: read on the exchange,
                // write on its alternate.
                if let Some(alternate) =
                    crate::handlers::queue::string_argument(&m.arguments, "alternate-exchange")
                {
                    ctx.check(Access::Read, "exchange", m.exchange.as_str())
                        .and_then(|()| ctx.check(Access::Write, "exchange", &alternate))
                        .map_err(|e| e.during(40, 10))?;
                }
            }
            ctx.vhost
                .declare_exchange(
                    m.exchange.as_str(),
                    m.kind.as_str(),
                    ExchangeOptions {
                        durable: m.durable,
                        auto_delete: m.auto_delete,
                        internal: m.internal,
                        arguments: m.arguments,
                    },
                    m.passive,
                )
                .map_err(|e| AmqpError::from(e).during(40, 10))?;
            reply(
                ctx,
                m.nowait,
                exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}),
            );
        }
        exchange::AMQPMethod::Delete(m) => {
            ctx.check(Access::Configure, "exchange", m.exchange.as_str())
                .map_err(|e| e.during(40, 20))?;
            ctx.vhost
                .delete_exchange(m.exchange.as_str(), m.if_unused)
                .map_err(|e| AmqpError::from(e).during(40, 20))?;
            reply(
                ctx,
                m.nowait,
                exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}),
            );
        }
        exchange::AMQPMethod::Bind(m) => {
            binding_allowed(
                ctx,
                m.source.as_str(),
                m.destination.as_str(),
                m.routing_key.as_str(),
            )
            .map_err(|e| e.during(40, 30))?;
            ctx.vhost
                .bind(
                    m.source.as_str(),
                    Destination::Exchange(m.destination.as_str().to_owned()),
                    m.routing_key.as_str(),
                    &m.arguments,
                    ctx.connection,
                )
                .map_err(|e| AmqpError::from(e).during(40, 30))?;
            reply(
                ctx,
                m.nowait,
                exchange::AMQPMethod::BindOk(exchange::BindOk {}),
            );
        }
        exchange::AMQPMethod::Unbind(m) => {
            binding_allowed(
                ctx,
                m.source.as_str(),
                m.destination.as_str(),
                m.routing_key.as_str(),
            )
            .map_err(|e| e.during(40, 40))?;
            ctx.vhost
                .unbind(
                    m.source.as_str(),
                    Destination::Exchange(m.destination.as_str().to_owned()),
                    m.routing_key.as_str(),
                    &m.arguments,
                    ctx.connection,
                )
                .map_err(|e| AmqpError::from(e).during(40, 40))?;
            reply(
                ctx,
                m.nowait,
                exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}),
            );
        }
        other => {
            return Err(crate::handlers::unexpected_method(&AMQPClass::Exchange(
                other,
            )));
        }
    }
    Ok(())
}

/// RabbitMQ's rule for exchange-to-exchange bindings: write on the
/// destination, read on the source (and, on a topic exchange, topic read
/// permission for the key).
fn binding_allowed(
    ctx: &Context<'_>,
    source: &str,
    destination: &str,
    routing_key: &str,
) -> Result<(), AmqpError> {
    ctx.check(Access::Write, "exchange", destination)?;
    ctx.check(Access::Read, "exchange", source)?;
    ctx.check_topic(Access::Read, source, routing_key)
}
