//! AMQP 0-9-1 routing: which of an exchange's bindings a published message
//! matches. Pure logic over the bindings; exchanges own and lock them.

pub(crate) mod headers;
pub(crate) mod topic;
