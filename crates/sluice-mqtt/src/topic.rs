//! MQTT topic names and filters: validation, matching (for retained
//! messages and subscription options), shared subscriptions, and the
//! mapping to AMQP routing keys as RabbitMQ's MQTT plugin makes it.
//!
//! RabbitMQ swaps `/` and `.` (an MQTT level separator is an AMQP word
//! separator, and a `.` inside an MQTT level becomes `/`) and writes the
//! single-level wildcard `+` as `*`; `#` stays `#`.

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidTopic(pub(crate) &'static str);

/// Checks a topic name a client publishes to (MQTT 3.1.1 §4.7.3, 5.0 §4.7.3).
pub(crate) fn validate_name(topic: &str) -> Result<(), InvalidTopic> {
    if topic.is_empty() {
        return Err(InvalidTopic("a topic name is empty"));
    }
    if topic.contains(['+', '#']) {
        return Err(InvalidTopic("a topic name holds a wildcard"));
    }
    if topic.contains('\0') {
        return Err(InvalidTopic("a topic name holds U+0000"));
    }
    Ok(())
}

/// Checks a topic filter (MQTT §4.7.1): `#` only as the last level and
/// alone in it, `+` alone in its level.
pub(crate) fn validate_filter(filter: &str) -> Result<(), InvalidTopic> {
    if filter.is_empty() {
        return Err(InvalidTopic("a topic filter is empty"));
    }
    if filter.contains('\0') {
        return Err(InvalidTopic("a topic filter holds U+0000"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || index + 1 != levels.len()) {
            return Err(InvalidTopic("'#' must be the whole last level of a filter"));
        }
        if level.contains('+') && *level != "+" {
            return Err(InvalidTopic("'+' must be a whole level of a filter"));
        }
    }
    Ok(())
}

/// A subscription's filter, split from its share group when it is a
/// shared subscription (`$share/{group}/{filter}`, MQTT 5.0 §4.8.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    /// The share group, for a shared subscription.
    pub(crate) group: Option<String>,
    /// The filter proper.
    pub(crate) filter: String,
}

/// Parses and validates a subscription's filter.
pub(crate) fn parse_filter(text: &str) -> Result<Filter, InvalidTopic> {
    if let Some(rest) = text.strip_prefix("$share/") {
        let Some((group, filter)) = rest.split_once('/') else {
            return Err(InvalidTopic("a shared subscription names no filter"));
        };
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(InvalidTopic("a share name is empty or holds a wildcard"));
        }
        validate_filter(filter)?;
        return Ok(Filter {
            group: Some(group.to_owned()),
            filter: filter.to_owned(),
        });
    }
    validate_filter(text)?;
    Ok(Filter {
        group: None,
        filter: text.to_owned(),
    })
}

/// Whether topic name `topic` matches `filter` (MQTT §4.7): `+` one
/// level, `#` the parent level and everything below; a filter starting
/// with a wildcard does not match topics starting with `$`.
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// The AMQP routing key (or binding key, for a filter) of an MQTT topic.
pub(crate) fn to_amqp(mqtt: &str) -> String {
    mqtt.split('/')
        .map(|level| match level {
            "+" => "*".to_owned(),
            other => other.replace('.', "/"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The MQTT topic of an AMQP routing key.
pub(crate) fn from_amqp(routing_key: &str) -> String {
    routing_key
        .split('.')
        .map(|word| word.replace('/', "."))
        .collect::<Vec<_>>()
        .join("/")
}

/// The MQTT filter of an AMQP binding key (`*` is `+`).
pub(crate) fn filter_from_amqp(binding_key: &str) -> String {
    binding_key
        .split('.')
        .map(|word| match word {
            "*" => "+".to_owned(),
            other => other.replace('/', "."),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_follow_the_wildcard_rules() {
        for good in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "a//b"] {
            assert!(validate_filter(good).is_ok(), "{good}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "#/a", "a+/b"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
        assert!(validate_name("a/+").is_err());
        assert!(validate_name("a/#").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("a/b c/ü").is_ok());
    }

    #[test]
    fn matching_follows_mqtt_section_4_7() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a"), "# takes the parent level too");
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"), "wildcards skip $ topics");
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(matches("+", ""), "an empty topic level is a level");
        assert!(matches("a//b", "a//b"));
    }

    #[test]
    fn shared_subscriptions_split_their_group() {
        assert_eq!(
            parse_filter("$share/g1/a/+").expect("valid"),
            Filter {
                group: Some("g1".into()),
                filter: "a/+".into()
            }
        );
        assert!(parse_filter("$share/g1").is_err());
        assert!(parse_filter("$share//a").is_err());
        assert!(parse_filter("$share/g+/a").is_err());
        assert_eq!(parse_filter("a/b").expect("valid").group, None);
    }

    #[test]
    fn topics_map_to_routing_keys_as_rabbitmq_maps_them() {
        assert_eq!(to_amqp("sensors/room.1/temp"), "sensors.room/1.temp");
        assert_eq!(to_amqp("a/+/#"), "a.*.#");
        assert_eq!(from_amqp("sensors.room/1.temp"), "sensors/room.1/temp");
        assert_eq!(filter_from_amqp("a.*.b*c.#"), "a/+/b*c/#");
        for topic in ["a/b", "x.y/z", "/lead", "trail/", "a//b"] {
            assert_eq!(from_amqp(&to_amqp(topic)), topic);
        }
    }
}
