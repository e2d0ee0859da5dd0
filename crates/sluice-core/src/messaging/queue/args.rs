//! Queue arguments: what `queue.declare`'s table asks for, checked with
//! RabbitMQ's errors, and the declaration's own flags.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::messaging::MessagingError;
use crate::messaging::message::{integer_value, string_value};

/// What happens when a queue is full (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready message.
    #[default]
    DropHead,
    /// Refuse the new message (nack to confirming publishers).
    RejectPublish,
    /// Refuse and dead-letter the new message.
    RejectPublishDlx,
}

/// `x-queue-type`: what keeps a queue's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// On the node that declared it.
    #[default]
    Classic,
    /// Replicated in a cluster (on one node, and until queues replicate,
    /// kept as a classic queue is), with RabbitMQ's quorum-queue rules:
    /// delivery counts and `x-delivery-limit`, durable only.
    Quorum,
    /// A view of a topic: messages stay, consumers read from an offset.
    Stream,
}

impl QueueType {
    /// The name `x-queue-type` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
            QueueType::Stream => "stream",
        }
    }
}

/// Queue arguments Sluice acts on, read from `queue.declare`'s table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArgs {
    /// `x-message-ttl`, milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-expires`, milliseconds unused before the queue is deleted.
    pub expires: Option<u64>,
    /// `x-max-length`, ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`, ready body bytes.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority` (1..=255).
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-queue-type`.
    pub queue_type: QueueType,
    /// `x-stream-partitions`: partitions of the topic a new stream creates.
    pub stream_partitions: Option<u32>,
    /// `x-max-age` of a stream, milliseconds (its topic's retention.ms).
    pub max_age_ms: Option<u64>,
    /// `x-delivery-limit` of a quorum queue: returns a message may take
    /// before it is dead-lettered (or dropped); `None` (or a negative
    /// value, as RabbitMQ 4 reads it) for no limit.
    pub delivery_limit: Option<u64>,
    /// `x-dead-letter-strategy` of a quorum queue.
    pub dead_letter_strategy: DeadLetterStrategy,
    /// `x-quorum-initial-group-size`: replicas of a quorum queue.
    pub quorum_initial_group_size: Option<u64>,
}

/// `x-dead-letter-strategy`: how a quorum queue hands its dead letters
/// over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeadLetterStrategy {
    /// Routed once, lost if a target cannot take it.
    #[default]
    AtMostOnce,
    /// Kept until the targets have it (with `x-overflow` reject-publish).
    AtLeastOnce,
}

/// The queue arguments RabbitMQ (3.10) knows, each with the queue types
/// that take it; a known argument on another type is refused ("... of
/// queue type rabbit_classic_queue"), unknown ones are ignored.
const TYPED_ARGUMENTS: &[(&str, &[QueueType])] = {
    use QueueType::{Classic, Quorum, Stream};
    &[
        ("x-expires", &[Classic, Quorum]),
        ("x-message-ttl", &[Classic, Quorum]),
        ("x-dead-letter-exchange", &[Classic, Quorum]),
        ("x-dead-letter-routing-key", &[Classic, Quorum]),
        ("x-max-length", &[Classic, Quorum]),
        ("x-max-length-bytes", &[Classic, Quorum, Stream]),
        ("x-overflow", &[Classic, Quorum]),
        ("x-single-active-consumer", &[Classic, Quorum]),
        ("x-max-priority", &[Classic]),
        ("x-queue-mode", &[Classic]),
        ("x-queue-version", &[Classic]),
        ("x-queue-master-locator", &[Classic]),
        ("x-max-in-memory-length", &[Quorum]),
        ("x-max-in-memory-bytes", &[Quorum]),
        ("x-delivery-limit", &[Quorum]),
        ("x-dead-letter-strategy", &[Quorum]),
        ("x-quorum-initial-group-size", &[Quorum]),
        ("x-queue-leader-locator", &[Quorum, Stream]),
        ("x-max-age", &[Stream]),
        ("x-stream-max-segment-size-bytes", &[Stream]),
        ("x-initial-cluster-size", &[Stream]),
    ]
};

impl QueueArgs {
    /// Reads and checks the arguments, with RabbitMQ's errors.
    ///
    /// # Errors
    /// [`MessagingError::PreconditionFailed`] naming the argument, in
    /// RabbitMQ's words (see [`InvalidArgument::rabbitmq_text`]).
    pub fn parse(
        queue: &str,
        vhost: &str,
        arguments: &FieldTable,
    ) -> Result<QueueArgs, MessagingError> {
        QueueArgs::check(arguments).map_err(|invalid| {
            MessagingError::PreconditionFailed(invalid.rabbitmq_text(queue, vhost))
        })
    }

    /// Reads and checks the arguments.
    ///
    /// # Errors
    /// The first argument refused, and why.
    pub fn check(arguments: &FieldTable) -> Result<QueueArgs, InvalidArgument> {
        let invalid = |name: &str, problem: ArgumentProblem| InvalidArgument {
            argument: name.to_owned(),
            problem,
        };
        let wrong_type =
            |name: &str, value: &AMQPValue| invalid(name, ArgumentProblem::Type(type_name(value)));
        let non_negative = |name: &str, value: &AMQPValue| -> Result<u64, InvalidArgument> {
            let n = integer_value(value).ok_or_else(|| wrong_type(name, value))?;
            u64::try_from(n).map_err(|_| invalid(name, ArgumentProblem::Negative(n)))
        };
        let positive = |name: &str, value: &AMQPValue| -> Result<u64, InvalidArgument> {
            let n = non_negative(name, value)?;
            if n == 0 {
                return Err(invalid(name, ArgumentProblem::Zero));
            }
            Ok(n)
        };
        let text = |name: &str, value: &AMQPValue| -> Result<String, InvalidArgument> {
            string_value(value).ok_or_else(|| wrong_type(name, value))
        };
        let mut args = QueueArgs::default();
        for (key, value) in arguments {
            let name = key.as_str();
            match name {
                "x-message-ttl" => args.message_ttl = Some(non_negative(name, value)?),
                "x-expires" => args.expires = Some(positive(name, value)?),
                "x-max-length" => args.max_length = Some(non_negative(name, value)?),
                "x-max-length-bytes" => args.max_length_bytes = Some(non_negative(name, value)?),
                "x-max-priority" => {
                    let n = positive(name, value)?;
                    if n > 255 {
                        return Err(invalid(name, ArgumentProblem::OutOfRange(n, 255)));
                    }
                    args.max_priority = Some(n as u8);
                }
                "x-overflow" => {
                    args.overflow = match text(name, value)?.as_str() {
                        "drop-head" => Overflow::DropHead,
                        "reject-publish" => Overflow::RejectPublish,
                        "reject-publish-dlx" => Overflow::RejectPublishDlx,
                        other => {
                            return Err(invalid(name, ArgumentProblem::Value(other.to_owned())));
                        }
                    }
                }
                "x-dead-letter-exchange" => args.dead_letter_exchange = Some(text(name, value)?),
                "x-dead-letter-routing-key" => {
                    args.dead_letter_routing_key = Some(text(name, value)?);
                }
                "x-single-active-consumer" => match value {
                    AMQPValue::Boolean(b) => args.single_active_consumer = *b,
                    other => return Err(wrong_type(name, other)),
                },
                "x-queue-type" => match text(name, value)?.as_str() {
                    "classic" => args.queue_type = QueueType::Classic,
                    "quorum" => args.queue_type = QueueType::Quorum,
                    "stream" => args.queue_type = QueueType::Stream,
                    other => {
                        return Err(invalid(name, ArgumentProblem::QueueType(other.to_owned())));
                    }
                },
                "x-stream-partitions" => {
                    let n = positive(name, value)?;
                    let most = u64::from(crate::MAX_PARTITIONS);
                    if n > most {
                        return Err(invalid(name, ArgumentProblem::OutOfRange(n, most)));
                    }
                    args.stream_partitions = Some(n as u32);
                }
                "x-delivery-limit" => {
                    let n = integer_value(value).ok_or_else(|| wrong_type(name, value))?;
                    args.delivery_limit = u64::try_from(n).ok();
                }
                "x-dead-letter-strategy" => {
                    args.dead_letter_strategy = match text(name, value)?.as_str() {
                        "at-most-once" => DeadLetterStrategy::AtMostOnce,
                        "at-least-once" => DeadLetterStrategy::AtLeastOnce,
                        _ => return Err(invalid(name, ArgumentProblem::DeadLetterStrategy)),
                    };
                }
                "x-quorum-initial-group-size" => {
                    let n = integer_value(value)
                        .ok_or_else(|| invalid(name, ArgumentProblem::Integer(type_name(value))))?;
                    let n = u64::try_from(n)
                        .map_err(|_| invalid(name, ArgumentProblem::Negative(n)))?;
                    if n == 0 {
                        return Err(invalid(name, ArgumentProblem::Zero));
                    }
                    args.quorum_initial_group_size = Some(n);
                }
                "x-max-age" => {
                    let age = text(name, value)?;
                    args.max_age_ms = Some(
                        crate::messaging::stream::parse_age_ms(&age)
                            .ok_or_else(|| invalid(name, ArgumentProblem::Value(age)))?,
                    );
                }
                _ => {}
            }
        }
        if let Some((refused, _)) = TYPED_ARGUMENTS
            .iter()
            .find(|(name, types)| !types.contains(&args.queue_type) && arguments.contains_key(name))
        {
            return Err(invalid(
                refused,
                ArgumentProblem::NotForType(args.queue_type),
            ));
        }
        if args.dead_letter_routing_key.is_some() && args.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                ArgumentProblem::NeedsDeadLetterExchange,
            ));
        }
        Ok(args)
    }
}

/// A queue argument [`QueueArgs::check`] refuses. `Display` says it in
/// plain words for the admin API; [`InvalidArgument::rabbitmq_text`] gives
/// RabbitMQ's text (with its Erlang terms) for the AMQP wire, which clients
/// and their tests match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidArgument {
    /// The argument's name (`x-max-length`).
    pub argument: String,
    /// What is wrong with its value.
    pub problem: ArgumentProblem,
}

/// What is wrong with a queue argument's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgumentProblem {
    /// The value has the wrong AMQP type (RabbitMQ's name of the type given).
    Type(&'static str),
    /// A negative number where none may be.
    Negative(i64),
    /// Zero where the value must be positive.
    Zero,
    /// A number above the most allowed (the second field).
    OutOfRange(u64, u64),
    /// A string that is not one of the accepted values.
    Value(String),
    /// `x-queue-type` names a type Sluice does not have.
    QueueType(String),
    /// `x-dead-letter-routing-key` without `x-dead-letter-exchange`.
    NeedsDeadLetterExchange,
    /// Not an integer where RabbitMQ says "expected integer" (the AMQP type
    /// given).
    Integer(&'static str),
    /// `x-dead-letter-strategy` is neither at-most-once nor at-least-once.
    DeadLetterStrategy,
    /// An argument queues of this type do not take.
    NotForType(QueueType),
}

impl InvalidArgument {
    /// RabbitMQ's `PRECONDITION_FAILED` text for `queue.declare`.
    pub fn rabbitmq_text(&self, queue: &str, vhost: &str) -> String {
        let why = match &self.problem {
            ArgumentProblem::Type(kind) => format!("{{unacceptable_type,{kind}}}"),
            ArgumentProblem::Negative(n) => format!("{{value_negative,{n}}}"),
            ArgumentProblem::Zero => "{value_zero,0}".to_owned(),
            ArgumentProblem::OutOfRange(n, _) => format!("{{value_out_of_range,{n}}}"),
            ArgumentProblem::Value(text) => format!("{{invalid_value,<<\"{text}\">>}}"),
            ArgumentProblem::QueueType(text) => {
                format!("{{unsupported_queue_type,<<\"{text}\">>}}")
            }
            ArgumentProblem::NeedsDeadLetterExchange => {
                "Key x-dead-letter-exchange should be present".to_owned()
            }
            ArgumentProblem::Integer(kind) => format!("\"expected integer, got {kind}\""),
            ArgumentProblem::DeadLetterStrategy => "invalid_dlx_strategy".to_owned(),
            ArgumentProblem::NotForType(kind) => {
                return format!(
                    "invalid arg '{}' for queue '{queue}' in vhost '{vhost}' of queue type rabbit_{}_queue",
                    self.argument,
                    kind.as_str()
                );
            }
        };
        format!(
            "invalid arg '{}' for queue '{queue}' in vhost '{vhost}': {why}",
            self.argument
        )
    }

    /// What the argument takes, for plain-words errors.
    fn expected(&self) -> &'static str {
        match self.argument.as_str() {
            "x-message-ttl" | "x-max-length" | "x-max-length-bytes" => "an integer of 0 or more",
            "x-expires"
            | "x-max-priority"
            | "x-stream-partitions"
            | "x-quorum-initial-group-size" => "an integer of 1 or more",
            "x-delivery-limit" => "an integer",
            "x-dead-letter-strategy" => "at-most-once or at-least-once",
            "x-overflow" => "drop-head, reject-publish or reject-publish-dlx",
            "x-single-active-consumer" => "a boolean",
            "x-queue-type" => "classic, quorum or stream",
            "x-max-age" => "an age such as 7D, 12h, 30m or 10s",
            _ => "a string",
        }
    }
}

impl std::fmt::Display for InvalidArgument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = &self.argument;
        let expected = self.expected();
        match &self.problem {
            ArgumentProblem::Type(kind) | ArgumentProblem::Integer(kind) => {
                let given = match *kind {
                    "longstr" => "a string",
                    "bool" => "a boolean",
                    "table" => "an object",
                    "array" => "an array",
                    "double" => "a number with a fraction",
                    "void" => "null",
                    _ => "a number",
                };
                write!(f, "{name} must be {expected}, got {given}")
            }
            ArgumentProblem::Negative(n) => write!(f, "{name} must be {expected}, got {n}"),
            ArgumentProblem::Zero => write!(f, "{name} must be {expected}, got 0"),
            ArgumentProblem::OutOfRange(n, most) => {
                write!(f, "{name} must be at most {most}, got {n}")
            }
            ArgumentProblem::Value(text) | ArgumentProblem::QueueType(text) => {
                write!(f, "{name} must be {expected}, got {text:?}")
            }
            ArgumentProblem::NeedsDeadLetterExchange => {
                write!(f, "{name} needs x-dead-letter-exchange as well")
            }
            ArgumentProblem::DeadLetterStrategy => write!(f, "{name} must be {expected}"),
            ArgumentProblem::NotForType(kind) => {
                write!(f, "{} queues do not take {name}", kind.as_str())
            }
        }
    }
}

fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => "longstr",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Float(_) | AMQPValue::Double(_) => "double",
        AMQPValue::Void => "void",
        _ => "long",
    }
}

/// How a queue was declared.
#[derive(Debug, Clone, Default)]
pub struct QueueOptions {
    /// Survives a restart (and keeps persistent messages on disk).
    pub durable: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// The declaration arguments, as given.
    pub arguments: FieldTable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_arguments_are_checked_with_rabbitmq_errors() {
        let mut table = FieldTable::default();
        table.insert("x-max-length".into(), AMQPValue::LongInt(-1));
        let error = QueueArgs::parse("q", "/", &table).expect_err("negative");
        assert_eq!(
            error.to_string(),
            "invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}"
        );
        let mut table = FieldTable::default();
        table.insert("x-max-priority".into(), AMQPValue::LongInt(256));
        assert!(QueueArgs::parse("q", "/", &table).is_err());
        let mut table = FieldTable::default();
        table.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        table.insert("x-message-ttl".into(), AMQPValue::ShortShortUInt(5));
        let args = QueueArgs::parse("q", "/", &table).expect("valid");
        assert_eq!(args.overflow, Overflow::RejectPublish);
        assert_eq!(args.message_ttl, Some(5));
    }

    #[test]
    fn each_queue_type_takes_its_own_arguments() {
        let table = |pairs: &[(&str, AMQPValue)]| {
            let mut table = FieldTable::default();
            for (name, value) in pairs {
                table.insert((*name).into(), value.clone());
            }
            table
        };
        let quorum = AMQPValue::LongString("quorum".into());
        let args = QueueArgs::check(&table(&[
            ("x-queue-type", quorum.clone()),
            ("x-delivery-limit", AMQPValue::LongInt(3)),
            ("x-quorum-initial-group-size", AMQPValue::LongInt(3)),
            (
                "x-dead-letter-strategy",
                AMQPValue::LongString("at-least-once".into()),
            ),
        ]))
        .expect("quorum arguments");
        assert_eq!(args.delivery_limit, Some(3));
        assert_eq!(args.quorum_initial_group_size, Some(3));
        assert_eq!(args.dead_letter_strategy, DeadLetterStrategy::AtLeastOnce);
        // RabbitMQ 4 reads a negative limit as none.
        let unlimited = QueueArgs::check(&table(&[
            ("x-queue-type", quorum.clone()),
            ("x-delivery-limit", AMQPValue::LongInt(-1)),
        ]))
        .expect("no limit");
        assert_eq!(unlimited.delivery_limit, None);
        let refused = QueueArgs::check(&table(&[("x-delivery-limit", AMQPValue::LongInt(3))]))
            .expect_err("not for classic queues");
        assert_eq!(
            refused.rabbitmq_text("q", "/"),
            "invalid arg 'x-delivery-limit' for queue 'q' in vhost '/' of queue type rabbit_classic_queue"
        );
        assert_eq!(
            refused.to_string(),
            "classic queues do not take x-delivery-limit"
        );
        let refused = QueueArgs::check(&table(&[
            ("x-queue-type", quorum),
            ("x-max-priority", AMQPValue::LongInt(3)),
        ]))
        .expect_err("not for quorum queues");
        assert_eq!(
            refused.problem,
            ArgumentProblem::NotForType(QueueType::Quorum)
        );
    }

    #[test]
    fn refused_arguments_read_in_plain_words_off_the_wire() {
        let refused = |name: &str, value: AMQPValue| {
            let mut table = FieldTable::default();
            table.insert(name.into(), value);
            QueueArgs::check(&table).expect_err("refused")
        };
        let negative = refused("x-max-length", AMQPValue::LongInt(-1));
        assert_eq!(negative.argument, "x-max-length");
        assert_eq!(
            negative.to_string(),
            "x-max-length must be an integer of 0 or more, got -1"
        );
        let text = refused("x-message-ttl", AMQPValue::LongString("soon".into()));
        assert_eq!(
            text.to_string(),
            "x-message-ttl must be an integer of 0 or more, got a string"
        );
        assert_eq!(
            text.rabbitmq_text("q", "/"),
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {unacceptable_type,longstr}"
        );
        let overflow = refused("x-overflow", AMQPValue::LongString("drop-tail".into()));
        assert_eq!(
            overflow.to_string(),
            "x-overflow must be drop-head, reject-publish or reject-publish-dlx, got \"drop-tail\""
        );
        let priority = refused("x-max-priority", AMQPValue::LongInt(300));
        assert_eq!(
            priority.to_string(),
            "x-max-priority must be at most 255, got 300"
        );
        for error in [&negative, &text, &overflow, &priority] {
            assert!(!error.to_string().contains('{'), "{error}");
        }
    }
}
