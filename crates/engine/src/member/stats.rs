//! What a member's requests look like: latency over the last minute (a log-scale
//! histogram per second), the requests in flight and the oldest one's age, and counters of
//! slow reads, timeouts and errors by kind. Kept by the guard every request goes through.

use crate::error::Op;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Buckets per power of two of microseconds (about 19 % apart).
const SUB: f64 = 4.0;
const BUCKETS: usize = 128;
/// Seconds of history the percentiles cover.
const WINDOW: u64 = 60;

/// A member's request figures, as `status` shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberIo {
    /// Requests sent and not answered yet (those given up on included).
    pub in_flight: u64,
    /// Age of the oldest request in flight, in milliseconds.
    pub oldest_ms: Option<u64>,
    /// Latency percentiles over the last minute, in microseconds (none: no requests).
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Requests answered in the last minute.
    pub requests_last_minute: u64,
    /// Reads answered from the other members because this one passed the slow limit.
    pub slow: u64,
    /// Requests given up on at the fail limit.
    pub timeouts: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub flush_errors: u64,
    pub checksum_errors: u64,
    /// Writes refused for want of space on the member's filesystem.
    pub no_space: u64,
    /// Reads and writes answered without error since the array was opened, and their bytes.
    #[serde(default)]
    pub reads: u64,
    #[serde(default)]
    pub read_bytes: u64,
    #[serde(default)]
    pub writes: u64,
    #[serde(default)]
    pub written_bytes: u64,
}

#[derive(Default)]
struct Window {
    /// (second, histogram) slots, one per second of the window.
    slots: Vec<(u64, [u32; BUCKETS])>,
}

fn bucket(us: u64) -> usize {
    (((us + 1) as f64).log2() * SUB) as usize % BUCKETS
}

fn bucket_value(b: usize) -> u64 {
    (2f64.powf((b as f64 + 0.5) / SUB) - 1.0).max(0.0) as u64
}

impl Window {
    fn record(&mut self, sec: u64, us: u64) {
        if self.slots.is_empty() {
            self.slots = vec![(u64::MAX, [0; BUCKETS]); WINDOW as usize];
        }
        let slot = &mut self.slots[(sec % WINDOW) as usize];
        if slot.0 != sec {
            *slot = (sec, [0; BUCKETS]);
        }
        slot.1[bucket(us).min(BUCKETS - 1)] += 1;
    }

    /// (count, p50, p99) over the seconds `(now - WINDOW, now]`.
    fn percentiles(&self, now: u64) -> (u64, Option<u64>, Option<u64>) {
        let mut sum = [0u64; BUCKETS];
        for (sec, h) in &self.slots {
            if *sec != u64::MAX && *sec + WINDOW > now && *sec <= now {
                for (s, v) in sum.iter_mut().zip(h.iter()) {
                    *s += *v as u64;
                }
            }
        }
        let n: u64 = sum.iter().sum();
        if n == 0 {
            return (0, None, None);
        }
        let at = |q: f64| {
            let want = ((n as f64) * q).ceil().max(1.0) as u64;
            let mut acc = 0;
            for (b, c) in sum.iter().enumerate() {
                acc += c;
                if acc >= want {
                    return Some(bucket_value(b));
                }
            }
            None
        };
        (n, at(0.5), at(0.99))
    }
}

/// One member's figures; every request goes through [`Stats::begin`] and
/// [`Stats::end`].
pub(crate) struct Stats {
    epoch: Instant,
    next: AtomicU64,
    in_flight: Mutex<BTreeMap<u64, (Instant, Op, u64)>>,
    window: Mutex<Window>,
    pub slow: AtomicU64,
    pub timeouts: AtomicU64,
    read_errors: AtomicU64,
    write_errors: AtomicU64,
    flush_errors: AtomicU64,
    pub checksum_errors: AtomicU64,
    no_space: AtomicU64,
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    written_bytes: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            epoch: Instant::now(),
            next: AtomicU64::new(0),
            in_flight: Mutex::new(BTreeMap::new()),
            window: Mutex::new(Window::default()),
            slow: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            flush_errors: AtomicU64::new(0),
            checksum_errors: AtomicU64::new(0),
            no_space: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
        }
    }
}

/// A request in flight, as [`Stats::oldest`] names it.
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    pub age: Duration,
    pub op: Op,
    pub offset: u64,
}

impl Stats {
    /// Records a request sent; returns its ticket for [`Stats::end`].
    pub fn begin(&self, op: Op, offset: u64) -> (u64, Instant) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let t = Instant::now();
        self.in_flight.lock().insert(id, (t, op, offset));
        (id, t)
    }

    /// Records a request answered (also one the caller gave up on).
    pub fn end(&self, (id, start): (u64, Instant), op: Op, err: Option<&std::io::Error>) {
        let now = Instant::now();
        self.in_flight.lock().remove(&id);
        let us = now.duration_since(start).as_micros() as u64;
        let sec = now.duration_since(self.epoch).as_secs();
        self.window.lock().record(sec, us);
        if let Some(e) = err {
            let c = if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
                &self.no_space
            } else {
                match op {
                    Op::Read => &self.read_errors,
                    Op::Flush => &self.flush_errors,
                    Op::Write | Op::Zero => &self.write_errors,
                }
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a read of `len` bytes answered without error.
    pub fn count_read(&self, len: usize) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Counts a write of `len` bytes answered without error.
    pub fn count_write(&self, len: usize) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.written_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Records a read answered without waiting for the device (no ticket: it could not
    /// hang), sent at `start`.
    pub fn answered_at_once(&self, start: Instant) {
        let now = Instant::now();
        let us = now.duration_since(start).as_micros() as u64;
        let sec = now.duration_since(self.epoch).as_secs();
        self.window.lock().record(sec, us);
    }

    /// The oldest request still in flight.
    pub fn oldest(&self) -> Option<Pending> {
        let g = self.in_flight.lock();
        g.values().next().map(|&(t, op, offset)| Pending {
            age: t.elapsed(),
            op,
            offset,
        })
    }

    /// p99 latency over the last minute, if any request was answered in it.
    pub fn p99(&self) -> Option<Duration> {
        let sec = self.epoch.elapsed().as_secs();
        let (_, _, p99) = self.window.lock().percentiles(sec);
        p99.map(Duration::from_micros)
    }

    pub fn snapshot(&self) -> MemberIo {
        let (in_flight, oldest) = {
            let g = self.in_flight.lock();
            (g.len() as u64, g.values().next().map(|v| v.0.elapsed()))
        };
        let sec = self.epoch.elapsed().as_secs();
        let (n, p50, p99) = self.window.lock().percentiles(sec);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MemberIo {
            in_flight,
            oldest_ms: oldest.map(|d| d.as_millis() as u64),
            p50_us: p50,
            p99_us: p99,
            requests_last_minute: n,
            slow: get(&self.slow),
            timeouts: get(&self.timeouts),
            read_errors: get(&self.read_errors),
            write_errors: get(&self.write_errors),
            flush_errors: get(&self.flush_errors),
            checksum_errors: get(&self.checksum_errors),
            no_space: get(&self.no_space),
            reads: get(&self.reads),
            read_bytes: get(&self.read_bytes),
            writes: get(&self.writes),
            written_bytes: get(&self.written_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_recorded_latencies() {
        let mut w = Window::default();
        for _ in 0..98 {
            w.record(10, 100);
        }
        w.record(10, 50_000);
        w.record(10, 60_000);
        let (n, p50, p99) = w.percentiles(10);
        assert_eq!(n, 100);
        let p50 = p50.unwrap();
        assert!((80..=125).contains(&p50), "p50 {p50}");
        let p99 = p99.unwrap();
        assert!((40_000..=62_000).contains(&p99), "p99 {p99}");
        // A minute later the window is empty.
        assert_eq!(w.percentiles(10 + WINDOW).0, 0);
    }

    #[test]
    fn in_flight_requests_and_errors_are_counted() {
        let s = Stats::default();
        let t = s.begin(Op::Read, 4096);
        assert_eq!(s.snapshot().in_flight, 1);
        assert_eq!(s.oldest().unwrap().offset, 4096);
        s.end(t, Op::Read, Some(&std::io::Error::other("bad")));
        let t = s.begin(Op::Write, 0);
        s.end(t, Op::Write, Some(&std::io::Error::from_raw_os_error(28)));
        let snap = s.snapshot();
        assert_eq!(snap.in_flight, 0);
        assert_eq!((snap.read_errors, snap.no_space), (1, 1));
        assert_eq!(snap.requests_last_minute, 2);
    }
}
