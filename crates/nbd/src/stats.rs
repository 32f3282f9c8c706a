//! Per-export figures the server keeps for whoever serves it (metrics): connections,
//! requests and bytes by kind, and a latency histogram. Updated with relaxed atomics on
//! the request path; read at any time with [`ExportStats::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds (a last, unbounded bucket
/// follows).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// What a request did, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Write,
    /// FLUSH, TRIM, WRITE_ZEROES, BLOCK_STATUS, CACHE and refused requests.
    Other,
}

/// Counters of one export, shared by all its connections.
#[derive(Debug, Default)]
pub struct ExportStats {
    connections: AtomicU64,
    connections_total: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    others: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    latency_count: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
}

/// The counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsSnapshot {
    /// Connections open now that selected this export (NBD_OPT_GO or EXPORT_NAME).
    pub connections: u64,
    /// Connections that selected this export since it started.
    pub connections_total: u64,
    pub reads: u64,
    pub writes: u64,
    pub others: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Requests per latency bucket (not cumulative), the last one unbounded.
    pub latency_buckets: Vec<u64>,
    pub latency_sum: Duration,
}

impl ExportStats {
    pub fn new() -> ExportStats {
        ExportStats::default()
    }

    pub(crate) fn connected(&self) {
        self.connections.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    pub(crate) fn disconnected(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    /// One request answered after `took`; `bytes` of payload read or written.
    pub(crate) fn request(&self, kind: RequestKind, bytes: u64, took: Duration) {
        match kind {
            RequestKind::Read => {
                self.reads.fetch_add(1, Relaxed);
                self.read_bytes.fetch_add(bytes, Relaxed);
            }
            RequestKind::Write => {
                self.writes.fetch_add(1, Relaxed);
                self.written_bytes.fetch_add(bytes, Relaxed);
            }
            RequestKind::Other => {
                self.others.fetch_add(1, Relaxed);
            }
        }
        let s = took.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_count[i].fetch_add(1, Relaxed);
        self.latency_sum_ns
            .fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections: self.connections.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            others: self.others.load(Relaxed),
            read_bytes: self.read_bytes.load(Relaxed),
            written_bytes: self.written_bytes.load(Relaxed),
            latency_buckets: self.latency_count.iter().map(|c| c.load(Relaxed)).collect(),
            latency_sum: Duration::from_nanos(self.latency_sum_ns.load(Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_kind_and_bucket() {
        let s = ExportStats::new();
        s.request(RequestKind::Read, 4096, Duration::from_micros(50));
        s.request(RequestKind::Write, 512, Duration::from_millis(3));
        s.request(RequestKind::Other, 0, Duration::from_secs(10));
        s.connected();
        assert_eq!(s.snapshot().connections, 1);
        let snap = s.snapshot();
        assert_eq!((snap.reads, snap.writes, snap.others), (1, 1, 1));
        assert_eq!((snap.read_bytes, snap.written_bytes), (4096, 512));
        assert_eq!(snap.latency_buckets[0], 1);
        assert_eq!(snap.latency_buckets[5], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(snap.latency_buckets[LATENCY_BUCKETS.len()], 1);
        s.disconnected();
        assert_eq!(s.snapshot().connections, 0);
        assert_eq!(s.snapshot().connections_total, 1);
    }
}
