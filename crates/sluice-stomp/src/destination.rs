//! RabbitMQ's STOMP destinations, and what each means for SEND and
//! SUBSCRIBE:
//!
//! | destination | SEND | SUBSCRIBE |
//! |---|---|---|
//! | `/queue/q` | default exchange, key `q` (declares a durable `q`) | consumes `q` (declared if missing) |
//! | `/amq/queue/q` | default exchange, key `q` | consumes the existing `q` |
//! | `/topic/k` | `amq.topic`, key `k` | a queue of its own bound to `amq.topic` with `k` |
//! | `/exchange/x[/k]` | exchange `x`, key `k` | a queue of its own bound to `x` with `k` |
//! | `/temp-queue/t` | (in `reply-to`) the connection's private queue `t` | consumed implicitly |
//! | `/reply-queue/q` | default exchange, key `q` | – |
//!
//! A frame that declares a queue (SEND or SUBSCRIBE to `/queue/`, a
//! subscription's own queue) passes RabbitMQ's queue-argument headers
//! (`x-queue-type`, `x-max-length`, ...) as the queue's arguments.

use amq_protocol::types::{AMQPValue, FieldTable};

/// RabbitMQ's queue arguments a SEND or SUBSCRIBE may carry as headers,
/// applied when it declares a queue; `true` for a number.
const QUEUE_ARGUMENTS: [(&str, bool); 10] = [
    ("x-dead-letter-exchange", false),
    ("x-dead-letter-routing-key", false),
    ("x-expires", true),
    ("x-max-length", true),
    ("x-max-length-bytes", true),
    ("x-max-priority", true),
    ("x-message-ttl", true),
    ("x-max-age", false),
    ("x-stream-max-segment-size-bytes", true),
    ("x-queue-type", false),
];

/// The queue arguments among `header`'s answers (RabbitMQ's list),
/// trimmed; `Err` names a number header that is not one.
pub(crate) fn queue_arguments<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
) -> Result<FieldTable, String> {
    let mut arguments = FieldTable::default();
    for (name, numeric) in QUEUE_ARGUMENTS {
        let Some(value) = header(name).map(str::trim) else {
            continue;
        };
        let value = if numeric {
            AMQPValue::LongLongInt(
                value
                    .parse::<i64>()
                    .map_err(|_| format!("header '{name}' must be an integer, not '{value}'"))?,
            )
        } else {
            AMQPValue::LongString(value.into())
        };
        arguments.insert(name.into(), value);
    }
    Ok(arguments)
}

/// A parsed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Destination {
    Queue(String),
    AmqQueue(String),
    Topic(String),
    Exchange { name: String, key: String },
    TempQueue(String),
    ReplyQueue(String),
}

impl Destination {
    /// Parses `text`; `None` for a destination RabbitMQ does not know, or
    /// a name longer than AMQP's 255 bytes.
    pub(crate) fn parse(text: &str) -> Option<Destination> {
        let named = |rest: &str| (!rest.is_empty() && rest.len() <= 255).then(|| rest.to_owned());
        if let Some(rest) = text.strip_prefix("/queue/") {
            return named(rest).map(Destination::Queue);
        }
        if let Some(rest) = text.strip_prefix("/amq/queue/") {
            return named(rest).map(Destination::AmqQueue);
        }
        if let Some(rest) = text.strip_prefix("/topic/") {
            return named(rest).map(Destination::Topic);
        }
        if let Some(rest) = text.strip_prefix("/temp-queue/") {
            return named(rest).map(Destination::TempQueue);
        }
        if let Some(rest) = text.strip_prefix("/reply-queue/") {
            return named(rest).map(Destination::ReplyQueue);
        }
        if let Some(rest) = text.strip_prefix("/exchange/") {
            let (name, key) = rest.split_once('/').unwrap_or((rest, ""));
            if name.is_empty() || name.len() > 255 || key.len() > 255 {
                return None;
            }
            return Some(Destination::Exchange {
                name: name.to_owned(),
                key: key.to_owned(),
            });
        }
        None
    }

    /// Where a SEND goes: the exchange and routing key.
    pub(crate) fn route(&self) -> (String, String) {
        match self {
            Destination::Queue(q) | Destination::AmqQueue(q) | Destination::ReplyQueue(q) => {
                (String::new(), q.clone())
            }
            Destination::Topic(k) => ("amq.topic".to_owned(), k.clone()),
            Destination::Exchange { name, key } => (name.clone(), key.clone()),
            Destination::TempQueue(t) => (String::new(), t.clone()),
        }
    }

    /// The destination header of a MESSAGE routed through `exchange`
    /// with `key` (RabbitMQ's reverse mapping).
    pub(crate) fn of_delivery(exchange: &str, key: &str) -> String {
        match exchange {
            "" => format!("/queue/{key}"),
            "amq.topic" => format!("/topic/{key}"),
            other => format!("/exchange/{other}/{key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn queue_argument_headers_become_typed_arguments() {
        use amq_protocol::types::AMQPValue;
        let headers = [
            ("x-queue-type", " quorum "),
            ("x-max-length", "10"),
            ("x-message-ttl", "60000"),
            ("x-dead-letter-exchange", "dlx"),
            ("x-custom", "ignored"),
        ];
        let find = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let arguments = super::queue_arguments(find).expect("valid");
        let inner = arguments.inner();
        assert_eq!(inner.len(), 4);
        assert_eq!(
            inner.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(inner.get("x-max-length"), Some(&AMQPValue::LongLongInt(10)));
        assert_eq!(
            inner.get("x-message-ttl"),
            Some(&AMQPValue::LongLongInt(60_000))
        );
        assert!(inner.get("x-custom").is_none());
        let bad = super::queue_arguments(|name| (name == "x-max-length").then_some("ten"));
        assert_eq!(
            bad.expect_err("not a number"),
            "header 'x-max-length' must be an integer, not 'ten'"
        );
    }

    use super::*;

    #[test]
    fn destinations_parse_as_rabbitmq_names_them() {
        assert_eq!(
            Destination::parse("/queue/a"),
            Some(Destination::Queue("a".into()))
        );
        assert_eq!(
            Destination::parse("/amq/queue/a"),
            Some(Destination::AmqQueue("a".into()))
        );
        assert_eq!(
            Destination::parse("/exchange/logs/error.db"),
            Some(Destination::Exchange {
                name: "logs".into(),
                key: "error.db".into()
            })
        );
        assert_eq!(
            Destination::parse("/exchange/fan"),
            Some(Destination::Exchange {
                name: "fan".into(),
                key: String::new()
            })
        );
        assert_eq!(
            Destination::parse("/topic/a.b").map(|d| d.route()),
            Some(("amq.topic".into(), "a.b".into()))
        );
        let long = format!("/queue/{}", "q".repeat(256));
        for bad in [
            "/queue/",
            "queue/a",
            "/exchange/",
            "/other/x",
            "",
            long.as_str(),
        ] {
            assert_eq!(Destination::parse(bad), None, "{bad}");
        }
        assert_eq!(Destination::of_delivery("", "q"), "/queue/q");
        assert_eq!(Destination::of_delivery("amq.topic", "a.b"), "/topic/a.b");
        assert_eq!(Destination::of_delivery("x", "k"), "/exchange/x/k");
    }
}
