//! `exchange.declare`, `exchange.delete`, `exchange.bind`, `exchange.unbind`.

use amq_protocol::protocol::{AMQPClass, exchange};
use sluice_core::messaging::{Destination, ExchangeOptions};

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
