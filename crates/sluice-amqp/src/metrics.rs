//! Names of the AMQP methods clients send, indexing the broker's per-method
//! request metrics (`sluice_amqp_method_duration_microseconds`).

use sluice_core::{Broker, RequestMetrics};

/// `(class id, method id, name)` of every method a client may send.
const METHODS: &[(u16, u16, &str)] = &[
    (10, 11, "connection.start-ok"),
    (10, 21, "connection.secure-ok"),
    (10, 31, "connection.tune-ok"),
    (10, 40, "connection.open"),
    (10, 50, "connection.close"),
    (10, 51, "connection.close-ok"),
    (10, 70, "connection.update-secret"),
    (20, 10, "channel.open"),
    (20, 20, "channel.flow"),
    (20, 21, "channel.flow-ok"),
    (20, 40, "channel.close"),
    (20, 41, "channel.close-ok"),
    (40, 10, "exchange.declare"),
    (40, 20, "exchange.delete"),
    (40, 30, "exchange.bind"),
    (40, 40, "exchange.unbind"),
    (50, 10, "queue.declare"),
    (50, 20, "queue.bind"),
    (50, 30, "queue.purge"),
    (50, 40, "queue.delete"),
    (50, 50, "queue.unbind"),
    (60, 10, "basic.qos"),
    (60, 20, "basic.consume"),
    (60, 30, "basic.cancel"),
    (60, 40, "basic.publish"),
    (60, 70, "basic.get"),
    (60, 80, "basic.ack"),
    (60, 90, "basic.reject"),
    (60, 100, "basic.recover-async"),
    (60, 110, "basic.recover"),
    (60, 120, "basic.nack"),
    (85, 10, "confirm.select"),
    (90, 10, "tx.select"),
    (90, 20, "tx.commit"),
    (90, 30, "tx.rollback"),
];

/// Index of `basic.publish`, recorded when a message's content is complete.
pub(crate) const BASIC_PUBLISH: (u16, u16) = (60, 40);

/// Sets up the per-method request metrics once per broker.
pub(crate) fn register(broker: &Broker) {
    broker
        .metrics()
        .amqp
        .get_or_init(|| RequestMetrics::new(METHODS.iter().map(|(_, _, name)| *name).collect()));
}

/// The metrics index of a method.
pub(crate) fn index(class_id: u16, method_id: u16) -> Option<usize> {
    METHODS
        .iter()
        .position(|(class, method, _)| *class == class_id && *method == method_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_one_index() {
        for (i, (class, method, _)) in METHODS.iter().enumerate() {
            assert_eq!(index(*class, *method), Some(i));
        }
        assert_eq!(
            index(BASIC_PUBLISH.0, BASIC_PUBLISH.1).map(|i| METHODS[i].2),
            Some("basic.publish")
        );
        assert_eq!(index(60, 41), None);
    }
}
