//! One file per AMQP class reachable on an open channel; `channel.*`,
//! `confirm.*` and `tx.*` are handled with the channel state in
//! `connection/` and `channel.rs`.

pub(crate) mod basic;
pub(crate) mod exchange;
pub(crate) mod queue;

use amq_protocol::protocol::AMQPClass;

use crate::errors::{AmqpError, COMMAND_INVALID};

/// A method a client must not send (a server-to-client method, say).
pub(crate) fn unexpected_method(class: &AMQPClass) -> AmqpError {
    AmqpError::connection(
        COMMAND_INVALID,
        format!(
            "unexpected method {}.{} from a client",
            class.get_amqp_class_id(),
            class.get_amqp_method_id()
        ),
    )
    .during(class.get_amqp_class_id(), class.get_amqp_method_id())
}
