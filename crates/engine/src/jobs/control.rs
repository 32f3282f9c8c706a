//! Long-running background jobs (rebuild, scrub): progress, ETA, rate limit, cancellation.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Default rate limit of rebuild and scrub, bytes per second of member I/O (md's default
/// `speed_limit_max` is 200 MB/s).
pub const DEFAULT_RATE: u64 = 200 << 20;

/// Shared between a job and whoever watches or steers it.
#[derive(Debug)]
pub struct JobControl {
    /// Bytes per second; 0 = unlimited. May change while the job runs.
    rate: AtomicU64,
    cancel: AtomicBool,
    done: AtomicU64,
    total: AtomicU64,
    /// Work done by this run (a resumed job starts with `done` at its checkpoint).
    this_run: AtomicU64,
    started: Instant,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    /// Bytes per second since the job started.
    pub rate: u64,
    /// Seconds left at that rate, when known.
    pub eta_seconds: Option<u64>,
    pub rate_limit: u64,
}

impl JobControl {
    pub fn new(rate_limit: u64) -> JobControl {
        JobControl {
            rate: AtomicU64::new(rate_limit),
            cancel: AtomicBool::new(false),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            this_run: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
    pub fn set_rate_limit(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
    pub(crate) fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }
    /// Counts `bytes` done before this run (a resumed job's checkpoint).
    pub(crate) fn advance_uncounted(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Counts `bytes` of work done and sleeps as long as the rate limit asks.
    pub(crate) fn advance(&self, bytes: u64) {
        self.count(bytes);
        self.throttle();
    }

    /// Counts `bytes` of work done without sleeping: for a caller holding locks that I/O
    /// waits on, which calls [`JobControl::throttle`] once it let go of them.
    pub(crate) fn count(&self, bytes: u64) {
        let all = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        // Work found along the way (a member failing mid-run) grows the total.
        self.total.fetch_max(all, Ordering::Relaxed);
        self.this_run.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Sleeps as long as the rate limit asks for the work counted so far.
    pub(crate) fn throttle(&self) {
        let done = self.this_run.load(Ordering::Relaxed);
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        // Work counted since start should have taken at least done/rate seconds.
        let due = Duration::from_secs_f64(done as f64 / rate as f64);
        loop {
            let spent = self.started.elapsed();
            if due <= spent || self.is_cancelled() {
                return;
            }
            std::thread::sleep((due - spent).min(Duration::from_secs(1)));
        }
    }
    pub fn progress(&self) -> Progress {
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let mut rate = (self.this_run.load(Ordering::Relaxed) as f64 / secs) as u64;
        // The first batch lands before the limiter has slept: do not promise more.
        let limit = self.rate.load(Ordering::Relaxed);
        if limit > 0 {
            rate = rate.min(limit);
        }
        Progress {
            done,
            total,
            rate,
            eta_seconds: (rate > 0).then(|| total.saturating_sub(done) / rate),
            rate_limit: self.rate.load(Ordering::Relaxed),
        }
    }
}
