//! RabbitMQ's resource alarms: how many message bytes queues hold in memory
//! (raised above the high watermark), and whether the data directory's disk
//! is low on free space. While either is raised, front-ends block publishers
//! (AMQP `connection.blocked`); nothing is dropped.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;

/// Ready message bytes a durable queue keeps in memory by default
/// (`amqp.queue_memory_bytes`).
pub const DEFAULT_QUEUE_BUDGET: u64 = 8 << 20;

/// Counts bytes held; the memory alarm rises when the count passes the
/// high watermark and clears when it is back under 80% of it. The disk
/// alarm follows the free space of the data directory's file system. The
/// published alarm is raised while either is. Shared by every queue.
#[derive(Debug)]
pub struct ResourceMonitor {
    used: AtomicU64,
    high_watermark: u64,
    queue_budget: u64,
    memory_over: AtomicBool,
    disk_low: AtomicBool,
    alarm: watch::Sender<bool>,
}

impl ResourceMonitor {
    /// A monitor that alarms above `high_watermark` bytes, with durable
    /// queues keeping [`DEFAULT_QUEUE_BUDGET`] bytes each in memory.
    pub fn new(high_watermark: u64) -> Arc<ResourceMonitor> {
        ResourceMonitor::with_queue_budget(high_watermark, DEFAULT_QUEUE_BUDGET)
    }

    /// A monitor that alarms above `high_watermark` bytes; each durable
    /// queue keeps the bodies of its oldest ready messages in memory up to
    /// `queue_budget` bytes, and newer persistent ones wait on disk only.
    pub fn with_queue_budget(high_watermark: u64, queue_budget: u64) -> Arc<ResourceMonitor> {
        Arc::new(ResourceMonitor {
            used: AtomicU64::new(0),
            high_watermark,
            queue_budget,
            memory_over: AtomicBool::new(false),
            disk_low: AtomicBool::new(false),
            alarm: watch::Sender::new(false),
        })
    }

    /// Records `bytes` held until the returned charge is dropped.
    pub fn charge(self: &Arc<Self>, bytes: u64) -> MemoryCharge {
        let before = self.used.fetch_add(bytes, Ordering::AcqRel);
        if before <= self.high_watermark && before + bytes > self.high_watermark {
            self.memory_over.store(true, Ordering::Release);
            self.publish();
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

    fn publish(&self) {
        let raised =
            self.memory_over.load(Ordering::Acquire) || self.disk_low.load(Ordering::Acquire);
        self.alarm.send_if_modified(|alarm| {
            let changed = *alarm != raised;
            *alarm = raised;
            changed
        });
    }

    /// Checks the free space of the file system holding `dir` against
    /// `limit` bytes and raises or clears the disk alarm.
    ///
    /// # Errors
    /// The `statvfs` failure.
    pub fn check_disk(&self, dir: &Path, limit: u64) -> std::io::Result<u64> {
        let stats = rustix::fs::statvfs(dir)?;
        let free = stats.f_bavail.saturating_mul(stats.f_frsize);
        let low = free < limit;
        if self.disk_low.swap(low, Ordering::AcqRel) != low {
            if low {
                tracing::warn!(free, limit, "disk alarm raised: publishers are blocked");
            } else {
                tracing::info!(free, limit, "disk alarm cleared: publishers may continue");
            }
            self.publish();
        }
        Ok(free)
    }

    /// Why the alarm is raised, in RabbitMQ's words for `connection.blocked`.
    pub fn reason(&self) -> &'static str {
        if self.disk_low.load(Ordering::Acquire) {
            "low on disk"
        } else {
            "low on memory"
        }
    }

    /// Whether queued message bytes are over the high watermark.
    pub fn memory_alarm(&self) -> bool {
        self.memory_over.load(Ordering::Acquire)
    }

    /// Whether the data directory's disk is under its free-space limit.
    pub fn disk_alarm(&self) -> bool {
        self.disk_low.load(Ordering::Acquire)
    }

    /// The configured high watermark in bytes.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// Ready message bytes a durable queue keeps in memory.
    pub fn queue_budget(&self) -> u64 {
        self.queue_budget
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
    monitor: Arc<ResourceMonitor>,
    bytes: u64,
}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        let before = self.monitor.used.fetch_sub(self.bytes, Ordering::AcqRel);
        let after = before.saturating_sub(self.bytes);
        // Cleared only well below the watermark, so that a queue hovering
        // at it does not block and unblock publishers at every message.
        let low = self.monitor.high_watermark / 10 * 8;
        if before > low && after <= low && self.monitor.memory_over.swap(false, Ordering::AcqRel) {
            self.monitor.publish();
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
        let monitor = ResourceMonitor::new(100);
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

    #[test]
    fn disk_alarm_follows_free_space_and_combines_with_memory() -> std::io::Result<()> {
        let monitor = ResourceMonitor::new(100);
        let alarm = monitor.alarm();
        let dir = std::env::temp_dir();
        let free = monitor.check_disk(&dir, 0)?;
        assert!(free > 0);
        assert!(!*alarm.borrow());
        monitor.check_disk(&dir, u64::MAX)?;
        assert!(*alarm.borrow(), "no disk has u64::MAX bytes free");
        let charge = monitor.charge(200);
        monitor.check_disk(&dir, 0)?;
        assert!(*alarm.borrow(), "memory alarm still raised");
        drop(charge);
        assert!(!*alarm.borrow());
        Ok(())
    }
}
