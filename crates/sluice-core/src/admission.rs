//! One admission check for every write path: whether a Kafka produce, an
//! AMQP publish or an admin API produce/publish may go ahead while a
//! resource alarm (memory high watermark, low disk) is raised.
//!
//! The policy, in one table ([`Admission::check`]):
//!
//! | writer | disk alarm | memory alarm |
//! | --- | --- | --- |
//! | Kafka produce | refused (KAFKA_STORAGE_ERROR, retriable) | waits up to 1 s, then writes (`throttle_time_ms`) |
//! | AMQP publish | the connection is blocked until it clears (`connection.blocked`) | the same |
//! | admin API produce, publish, queue move | refused (503 `blocked`) | refused (503 `blocked`) |
//!
//! Stream appends and forwarded records follow the front-end that wrote
//! them. Topic and queue counts are capped where they are created.

use std::sync::Arc;

use tokio::sync::watch;

use crate::messaging::ResourceMonitor;

/// Who wants to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    KafkaProduce,
    AmqpPublish,
    MqttPublish,
    /// The admin API's produce, publish and queue move.
    Admin,
}

/// A resource alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    Disk,
    Memory,
}

impl Alarm {
    /// The alarm in RabbitMQ's words (`connection.blocked` reasons).
    pub fn reason(self) -> &'static str {
        match self {
            Alarm::Disk => "low on disk",
            Alarm::Memory => "low on memory",
        }
    }
}

/// What the check says about one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Hold the write until the alarm clears (AMQP), or for a bounded
    /// time (Kafka's throttle).
    Wait(Alarm),
    Refuse(Alarm),
}

/// The admission check of a broker.
#[derive(Debug)]
pub struct Admission {
    monitor: Arc<ResourceMonitor>,
}

impl Admission {
    pub(crate) fn new(monitor: Arc<ResourceMonitor>) -> Admission {
        Admission { monitor }
    }

    /// The alarm raised now, the disk's first.
    pub fn raised(&self) -> Option<Alarm> {
        if self.monitor.disk_alarm() {
            Some(Alarm::Disk)
        } else if self.monitor.memory_alarm() {
            Some(Alarm::Memory)
        } else {
            None
        }
    }

    /// Whether `writer` may write now.
    pub fn check(&self, writer: Writer) -> Verdict {
        match (writer, self.raised()) {
            (_, None) => Verdict::Admit,
            (Writer::KafkaProduce, Some(Alarm::Disk)) => Verdict::Refuse(Alarm::Disk),
            (Writer::KafkaProduce, Some(Alarm::Memory)) => Verdict::Wait(Alarm::Memory),
            (Writer::AmqpPublish | Writer::MqttPublish, Some(alarm)) => Verdict::Wait(alarm),
            (Writer::Admin, Some(alarm)) => Verdict::Refuse(alarm),
        }
    }

    /// Changes of "some alarm is raised", for writers that wait.
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.monitor.alarm()
    }
}
