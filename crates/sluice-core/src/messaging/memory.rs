//! How many message bytes queues hold in memory, and the alarm raised when
//! that passes the high watermark (publishers are then blocked by the
//! front-ends, RabbitMQ's memory alarm).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

/// Counts bytes held; raises the alarm when the count passes the high
/// watermark and clears it when the count is back under 80% of it. Shared
/// by every queue of the broker.
#[derive(Debug)]
pub struct MemoryMonitor {
    used: AtomicU64,
    high_watermark: u64,
    alarm: watch::Sender<bool>,
}

impl MemoryMonitor {
    /// A monitor that alarms above `high_watermark` bytes.
    pub fn new(high_watermark: u64) -> Arc<MemoryMonitor> {
        Arc::new(MemoryMonitor {
            used: AtomicU64::new(0),
            high_watermark,
            alarm: watch::Sender::new(false),
        })
    }

    /// Records `bytes` held until the returned charge is dropped.
    pub fn charge(self: &Arc<Self>, bytes: u64) -> MemoryCharge {
        let before = self.used.fetch_add(bytes, Ordering::AcqRel);
        if before <= self.high_watermark && before + bytes > self.high_watermark {
            self.alarm.send_replace(true);
            tracing::warn!(
                used = before + bytes,
                high_watermark = self.high_watermark,
                "memory alarm raised: publishers are blocked"
            );
        }
        MemoryCharge {
            monitor: Arc::clone(self),
            bytes,
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The alarm: true while above the high watermark.
    pub fn alarm(&self) -> watch::Receiver<bool> {
        self.alarm.subscribe()
    }
}

/// Bytes held by one queue entry; released on drop.
#[derive(Debug)]
pub struct MemoryCharge {
    monitor: Arc<MemoryMonitor>,
    bytes: u64,
}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        let before = self.monitor.used.fetch_sub(self.bytes, Ordering::AcqRel);
        let after = before.saturating_sub(self.bytes);
        // Cleared only well below the watermark, so that a queue hovering
        // at it does not block and unblock publishers at every message.
        let low = self.monitor.high_watermark / 10 * 8;
        if before > low && after <= low && *self.monitor.alarm.borrow() {
            self.monitor.alarm.send_replace(false);
            tracing::info!(
                used = after,
                "memory alarm cleared: publishers may continue"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_follows_the_watermark_both_ways() {
        let monitor = MemoryMonitor::new(100);
        let alarm = monitor.alarm();
        let a = monitor.charge(20);
        assert!(!*alarm.borrow());
        let b = monitor.charge(85);
        assert!(*alarm.borrow());
        assert_eq!(monitor.used(), 105);
        drop(a);
        assert!(
            *alarm.borrow(),
            "85 bytes is under the watermark but not under 80%"
        );
        drop(b);
        assert!(!*alarm.borrow());
        assert_eq!(monitor.used(), 0);
        let _c = monitor.charge(101);
        assert!(*alarm.borrow(), "raised again");
    }
}
