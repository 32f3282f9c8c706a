//! Per-stripe-row locks: writes to one row (and degraded reads that reconstruct from it)
//! serialise; different rows proceed in parallel.

use parking_lot::{Condvar, Mutex};
use std::collections::HashSet;

const SHARDS: usize = 64;

type Key = (u32, u64);

pub struct StripeLocks {
    shards: Box<[(Mutex<HashSet<Key>>, Condvar)]>,
}

pub struct StripeGuard<'a> {
    locks: &'a StripeLocks,
    key: Key,
}

impl Default for StripeLocks {
    fn default() -> Self {
        StripeLocks {
            shards: (0..SHARDS)
                .map(|_| (Mutex::new(HashSet::new()), Condvar::new()))
                .collect(),
        }
    }
}

impl StripeLocks {
    fn shard(&self, key: Key) -> &(Mutex<HashSet<Key>>, Condvar) {
        let h = (key.0 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ key.1;
        &self.shards[(h.wrapping_mul(0xff51_afd7_ed55_8ccd) >> 58) as usize % SHARDS]
    }

    /// Locks row `row` of chunk `chunk` until the guard drops.
    pub fn lock(&self, chunk: u32, row: u64) -> StripeGuard<'_> {
        let key = (chunk, row);
        let (m, cv) = self.shard(key);
        let mut held = m.lock();
        while held.contains(&key) {
            cv.wait(&mut held);
        }
        held.insert(key);
        StripeGuard { locks: self, key }
    }
}

impl Drop for StripeGuard<'_> {
    fn drop(&mut self) {
        let (m, cv) = self.locks.shard(self.key);
        m.lock().remove(&self.key);
        cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_holder_per_row() {
        let locks = StripeLocks::default();
        let inside = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let _g = locks.lock(7, 3);
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        // Different rows do not block each other.
        let _a = locks.lock(1, 1);
        let _b = locks.lock(1, 2);
    }
}
