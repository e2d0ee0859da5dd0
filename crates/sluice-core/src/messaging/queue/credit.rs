//! Delivery credit: how many deliveries a consumer (and its channel) may
//! have outstanding.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Delivery credit of a consumer: how many deliveries it may have
/// outstanding. A channel-wide credit (global `basic.qos`, channel flow) is
/// the parent of its consumers' credits.
#[derive(Debug)]
pub struct Credit {
    limit: AtomicU32,
    used: AtomicU32,
    paused: AtomicBool,
    parent: Option<Arc<Credit>>,
    /// Woken when units come back (stream readers wait on it).
    released: tokio::sync::Notify,
}

impl Credit {
    /// A credit of `limit` outstanding deliveries (0: unlimited).
    pub fn new(limit: u32, parent: Option<Arc<Credit>>) -> Arc<Credit> {
        Arc::new(Credit {
            limit: AtomicU32::new(limit),
            used: AtomicU32::new(0),
            paused: AtomicBool::new(false),
            parent,
            released: tokio::sync::Notify::new(),
        })
    }

    /// Resolves after units come back here (not through the parent alone).
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    fn take_own(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        if self.paused.load(Ordering::Acquire) {
            return false;
        }
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if limit != 0 && used >= limit {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Takes one unit here and in the parent, or none.
    pub fn try_acquire(&self) -> bool {
        if !self.take_own() {
            return false;
        }
        if let Some(parent) = &self.parent
            && !parent.take_own()
        {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Whether a unit could be taken now (a hint; races are harmless).
    /// Counts a delivery made without asking (another node dispatched it
    /// within this consumer's limit), so its release balances.
    pub fn take(&self) {
        self.used.fetch_add(1, Ordering::AcqRel);
        if let Some(parent) = &self.parent {
            parent.used.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn available(&self) -> bool {
        let own = {
            let limit = self.limit.load(Ordering::Acquire);
            !self.paused.load(Ordering::Acquire)
                && (limit == 0 || self.used.load(Ordering::Acquire) < limit)
        };
        own && self.parent.as_ref().is_none_or(|p| p.available())
    }

    /// Returns `n` units here and in the parent.
    pub fn release(&self, n: u32) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
        if let Some(parent) = &self.parent {
            parent.release(n);
        }
        self.released.notify_waiters();
    }

    /// Changes the limit (0: unlimited).
    /// Outstanding deliveries allowed (0: no limit).
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
        self.released.notify_waiters();
    }

    /// Stops (or resumes) deliveries (`channel.flow`).
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
        self.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_respects_own_and_parent_limits() {
        let channel = Credit::new(3, None);
        let a = Credit::new(2, Some(Arc::clone(&channel)));
        let b = Credit::new(0, Some(Arc::clone(&channel)));
        assert!(a.try_acquire());
        assert!(a.try_acquire());
        assert!(!a.try_acquire(), "consumer limit");
        assert!(b.try_acquire());
        assert!(!b.try_acquire(), "channel limit");
        a.release(1);
        assert!(b.try_acquire());
        channel.set_paused(true);
        a.release(1);
        assert!(!a.try_acquire(), "paused channel");
    }
}
