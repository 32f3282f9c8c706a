//! The Prometheus endpoint (`serve --metrics`, the daemon's `[metrics] listen`): text
//! format at `/metrics`, names prefixed `damocles_`, figures taken at each scrape from the
//! arrays' status, the control servers' job state, the volumes' I/O counters and the
//! exports' NBD counters.

use crate::control::proto::JobKind;
use crate::control::server::Shared;
use anyhow::{Context, Result};
use damocles_engine::{Array, Health, MemberHealth, Status, VolumeIoCounts};
use damocles_nbd::{ExportStats, LATENCY_BUCKETS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// An array the endpoint reports on.
pub struct ArraySource {
    /// Its name (or UUID) as the config or `serve` names it.
    pub key: String,
    pub array: Weak<Array>,
    pub shared: Arc<Shared>,
}

/// An export the endpoint reports on.
pub struct ExportSource {
    pub name: String,
    pub array: String,
    pub stats: Arc<ExportStats>,
}

/// What is served now (the daemon changes it on reload).
#[derive(Default)]
pub struct Sources {
    pub arrays: Vec<ArraySource>,
    pub exports: Vec<ExportSource>,
}

type Labels = Vec<(String, String)>;

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One metric family being written: its samples, then encoded at once.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, f64)>,
}

fn fam(name: &'static str, help: &'static str, kind: MetricType) -> Family {
    Family {
        name,
        help,
        kind,
        samples: Vec::new(),
    }
}

impl Family {
    fn add(&mut self, labels: Labels, v: impl Into<f64>) {
        self.samples.push((labels, v.into()));
    }

    fn encode(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut m = enc.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, v) in &self.samples {
            let mut e = m.encode_family(labels)?;
            match self.kind {
                MetricType::Counter => e.encode_counter::<NoLabelSet, _, f64>(v, None)?,
                _ => e.encode_gauge(v)?,
            }
        }
        Ok(())
    }
}

/// Takes the figures at scrape time.
struct Scrape(Arc<Mutex<Sources>>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut fams = ArrayFamilies::new();
        let mut vols = VolumeFamilies::new();
        for a in &s.arrays {
            if let Some(arr) = a.array.upgrade() {
                let st = arr.status();
                fams.array(&a.key, &st, &a.shared);
                vols.array(&a.key, &st, &arr.volume_io_counts());
            }
        }
        for f in fams.all().into_iter().chain(vols.all()) {
            f.encode(&mut enc)?;
        }
        export_families(&s.exports, &mut enc)
    }
}

struct ArrayFamilies {
    health: Family,
    size: Family,
    used: Family,
    dirty: Family,
    degraded: Family,
    lost: Family,
    errors: Family,
    scrub_last: Family,
    job_running: Family,
    job_done: Family,
    job_total: Family,
    job_rate: Family,
    job_progress: Family,
    m_state: Family,
    m_size: Family,
    m_used: Family,
    m_in_flight: Family,
    m_latency: Family,
    m_requests: Family,
    m_slow: Family,
    m_timeouts: Family,
    m_errors: Family,
    m_ops: Family,
    m_bytes: Family,
}

impl ArrayFamilies {
    fn new() -> ArrayFamilies {
        use MetricType::{Counter as C, Gauge as G};
        ArrayFamilies {
            health: fam("array_health", "1 for the array's health (ok, degraded, failed), else 0", G),
            size: fam("array_size_bytes", "Size of the array's virtual disk (every volume's chunks)", G),
            used: fam("array_used_bytes", "Virtual bytes in chunks allocated (holding data), every volume", G),
            dirty: fam("array_dirty_bytes", "Bytes written but not yet committed", G),
            degraded: fam("array_chunks_degraded", "Chunks with a slice on a member that is gone", G),
            lost: fam("array_lost_bytes", "Volume bytes whose data is lost", G),
            errors: fam("array_errors", "Errors since the array was opened, by kind (repaired: checksum repairs)", C),
            scrub_last: fam("array_scrub_last_finished_seconds", "When the last scrub finished (seconds since the epoch, 0: never)", G),
            job_running: fam("job_running", "1 while the job (rebuild, scrub, reshape) runs", G),
            job_done: fam("job_done_bytes", "Bytes the running job has done", G),
            job_total: fam("job_total_bytes", "Bytes the running job has to do", G),
            job_rate: fam("job_rate_bytes_per_second", "Rate of the running job since it started", G),
            job_progress: fam("job_progress_ratio", "Fraction of the running job done (0 to 1)", G),
            m_state: fam("member_state", "1 for the member's state (ok, missing, stale, failed, spare, replacing, removed), else 0", G),
            m_size: fam("member_size_bytes", "Size of the member", G),
            m_used: fam("member_used_bytes", "Bytes of chunk slices on the member", G),
            m_in_flight: fam("member_requests_in_flight", "Member requests sent and not answered", G),
            m_latency: fam("member_latency_seconds", "Member request latency over the last minute, by quantile", G),
            m_requests: fam("member_requests_last_minute", "Member requests answered in the last minute", G),
            m_slow: fam("member_slow_reads", "Reads answered from the other members because this one passed the slow limit", C),
            m_timeouts: fam("member_timeouts", "Member requests given up on at the fail limit", C),
            m_errors: fam("member_errors", "Member errors by kind", C),
            m_ops: fam("member_requests", "Member reads and writes answered without error, by op", C),
            m_bytes: fam("member_bytes", "Bytes of member reads and writes answered without error, by op", C),
        }
    }

    fn all(&self) -> [&Family; 24] {
        [
            &self.health,
            &self.size,
            &self.used,
            &self.dirty,
            &self.degraded,
            &self.lost,
            &self.errors,
            &self.scrub_last,
            &self.job_running,
            &self.job_done,
            &self.job_total,
            &self.job_rate,
            &self.job_progress,
            &self.m_state,
            &self.m_size,
            &self.m_used,
            &self.m_in_flight,
            &self.m_latency,
            &self.m_requests,
            &self.m_slow,
            &self.m_timeouts,
            &self.m_errors,
            &self.m_ops,
            &self.m_bytes,
        ]
    }

    fn array(&mut self, key: &str, st: &Status, shared: &Shared) {
        let base = l(&[("array", key), ("uuid", &st.uuid)]);
        let with = |extra: &[(&str, &str)]| {
            let mut v = base.clone();
            v.extend(l(extra));
            v
        };
        for (h, name) in [
            (Health::Ok, "ok"),
            (Health::Degraded, "degraded"),
            (Health::Failed, "failed"),
        ] {
            self.health
                .add(with(&[("health", name)]), u8::from(st.health == h));
        }
        self.size.add(base.clone(), st.size as f64);
        self.used.add(
            base.clone(),
            (st.chunks_allocated as u64 * st.chunk_size) as f64,
        );
        self.dirty.add(base.clone(), st.dirty as f64);
        self.degraded.add(base.clone(), st.chunks_degraded as f64);
        self.lost.add(
            base.clone(),
            st.lost.iter().map(|r| r.len).sum::<u64>() as f64,
        );
        let e = &st.errors;
        for (kind, v) in [
            ("read", e.read_errors),
            ("write", e.write_errors),
            ("checksum", e.checksum_errors),
            ("repaired", e.repaired),
            ("unrecoverable", e.unrecoverable),
        ] {
            self.errors.add(with(&[("kind", kind)]), v as f64);
        }
        self.scrub_last
            .add(base.clone(), st.scrub.last_finished as f64);
        for job in [JobKind::Rebuild, JobKind::Scrub, JobKind::Reshape] {
            let Some(j) = shared.job(job) else { continue };
            let jl = with(&[("job", job.name())]);
            self.job_running.add(jl.clone(), u8::from(j.running));
            if let Some(p) = j.progress {
                self.job_done.add(jl.clone(), p.done as f64);
                self.job_total.add(jl.clone(), p.total as f64);
                self.job_rate.add(jl.clone(), p.rate as f64);
                let ratio = if p.total == 0 {
                    0.0
                } else {
                    p.done as f64 / p.total as f64
                };
                self.job_progress.add(jl, ratio);
            }
        }
        for m in &st.members {
            self.member(&base, m);
        }
    }

    fn member(&mut self, base: &Labels, m: &damocles_engine::MemberStatus) {
        let index = m.index.to_string();
        let mut ml = base.clone();
        ml.extend(l(&[
            ("member", &index),
            ("device", m.device.as_deref().unwrap_or("")),
        ]));
        let with = |extra: &[(&str, &str)]| {
            let mut v = ml.clone();
            v.extend(l(extra));
            v
        };
        use MemberHealth::*;
        for (s, name) in [
            (Ok, "ok"),
            (Missing, "missing"),
            (Stale, "stale"),
            (Failed, "failed"),
            (Spare, "spare"),
            (Replacing, "replacing"),
            (Removed, "removed"),
        ] {
            self.m_state
                .add(with(&[("state", name)]), u8::from(m.state == s));
        }
        self.m_size.add(ml.clone(), m.size as f64);
        self.m_used.add(ml.clone(), m.used as f64);
        let Some(io) = &m.io else { return };
        self.m_in_flight.add(ml.clone(), io.in_flight as f64);
        for (q, v) in [("0.5", io.p50_us), ("0.99", io.p99_us)] {
            if let Some(us) = v {
                self.m_latency
                    .add(with(&[("quantile", q)]), us as f64 / 1e6);
            }
        }
        self.m_requests
            .add(ml.clone(), io.requests_last_minute as f64);
        self.m_slow.add(ml.clone(), io.slow as f64);
        self.m_timeouts.add(ml.clone(), io.timeouts as f64);
        for (op, n, bytes) in [
            ("read", io.reads, io.read_bytes),
            ("write", io.writes, io.written_bytes),
        ] {
            self.m_ops.add(with(&[("op", op)]), n as f64);
            self.m_bytes.add(with(&[("op", op)]), bytes as f64);
        }
        for (kind, v) in [
            ("read", io.read_errors),
            ("write", io.write_errors),
            ("flush", io.flush_errors),
            ("checksum", io.checksum_errors),
            ("no_space", io.no_space),
        ] {
            self.m_errors.add(with(&[("kind", kind)]), v as f64);
        }
    }
}

/// Per volume (labels `array`, `uuid`, `volume`) and the array's raw space.
struct VolumeFamilies {
    raw: Family,
    allocated: Family,
    reserved: Family,
    free: Family,
    size: Family,
    v_allocated: Family,
    thin: Family,
    health: Family,
    tolerance: Family,
    can_lose: Family,
    lost: Family,
    requests: Family,
    bytes: Family,
}

impl VolumeFamilies {
    fn new() -> VolumeFamilies {
        use MetricType::{Counter as C, Gauge as G};
        VolumeFamilies {
            raw: fam(
                "array_raw_bytes",
                "Raw space of the members' data areas new chunks may use",
                G,
            ),
            allocated: fam(
                "array_allocated_bytes",
                "Raw space taken by allocated chunks (data and redundancy)",
                G,
            ),
            reserved: fam(
                "array_reserved_bytes",
                "Raw space promised to reserved volumes for chunks not written yet",
                G,
            ),
            free: fam(
                "array_free_bytes",
                "Raw space neither allocated nor reserved",
                G,
            ),
            size: fam("volume_size_bytes", "Size of the volume", G),
            v_allocated: fam(
                "volume_allocated_bytes",
                "Volume bytes in chunks allocated (written at least once)",
                G,
            ),
            thin: fam(
                "volume_thin",
                "1 for a thin volume (takes space as written), 0 for a reserved one",
                G,
            ),
            health: fam(
                "volume_health",
                "1 for the volume's health (ok, degraded, failed), else 0",
                G,
            ),
            tolerance: fam(
                "volume_tolerance",
                "Member failures the volume's layout survives",
                G,
            ),
            can_lose: fam(
                "volume_can_lose",
                "Further member failures the volume survives now, with the members present",
                G,
            ),
            lost: fam(
                "volume_lost_bytes",
                "Volume bytes that cannot be read (lost, or on members gone beyond its redundancy)",
                G,
            ),
            requests: fam(
                "volume_requests",
                "Reads and writes done through the volume's exports, by op",
                C,
            ),
            bytes: fam(
                "volume_bytes",
                "Bytes read and written through the volume's exports, by op",
                C,
            ),
        }
    }

    fn all(&self) -> [&Family; 13] {
        [
            &self.raw,
            &self.allocated,
            &self.reserved,
            &self.free,
            &self.size,
            &self.v_allocated,
            &self.thin,
            &self.health,
            &self.tolerance,
            &self.can_lose,
            &self.lost,
            &self.requests,
            &self.bytes,
        ]
    }

    fn array(&mut self, key: &str, st: &Status, io: &HashMap<u32, VolumeIoCounts>) {
        let base = l(&[("array", key), ("uuid", &st.uuid)]);
        let sp = &st.space;
        self.raw.add(base.clone(), sp.raw as f64);
        self.allocated.add(base.clone(), sp.allocated as f64);
        self.reserved.add(base.clone(), sp.reserved as f64);
        self.free.add(base.clone(), sp.free as f64);
        for v in &st.volumes {
            let mut vl = base.clone();
            vl.extend(l(&[("volume", &v.name)]));
            let with = |k: &str, val: &str| {
                let mut b = vl.clone();
                b.push((k.to_string(), val.to_string()));
                b
            };
            self.size.add(vl.clone(), v.size as f64);
            self.v_allocated.add(vl.clone(), v.allocated as f64);
            self.thin.add(vl.clone(), u8::from(v.thin));
            for h in ["ok", "degraded", "failed"] {
                self.health.add(with("health", h), u8::from(v.health == h));
            }
            self.tolerance.add(vl.clone(), v.tolerance as f64);
            self.can_lose.add(vl.clone(), v.can_lose as f64);
            self.lost
                .add(vl.clone(), v.lost.iter().map(|r| r.len).sum::<u64>() as f64);
            let c = io.get(&v.id).copied().unwrap_or_default();
            self.requests.add(with("op", "read"), c.reads as f64);
            self.requests.add(with("op", "write"), c.writes as f64);
            self.bytes.add(with("op", "read"), c.read_bytes as f64);
            self.bytes.add(with("op", "write"), c.written_bytes as f64);
        }
    }
}

fn export_families(exports: &[ExportSource], enc: &mut DescriptorEncoder) -> std::fmt::Result {
    use MetricType::{Counter as C, Gauge as G};
    let mut conns = fam("export_connections", "NBD connections open now", G);
    let mut conns_total = fam("export_connections_accepted", "NBD connections accepted", C);
    let mut requests = fam(
        "export_requests",
        "NBD requests answered, by op (read, write, other)",
        C,
    );
    let mut bytes = fam(
        "export_bytes",
        "Payload bytes read or written by NBD clients",
        C,
    );
    let snaps: Vec<_> = exports.iter().map(|e| (e, e.stats.snapshot())).collect();
    for (e, s) in &snaps {
        let base = l(&[("export", &e.name), ("array", &e.array)]);
        let with = |k: &str, v: &str| {
            let mut b = base.clone();
            b.push((k.to_string(), v.to_string()));
            b
        };
        conns.add(base.clone(), s.connections as f64);
        conns_total.add(base.clone(), s.connections_total as f64);
        requests.add(with("op", "read"), s.reads as f64);
        requests.add(with("op", "write"), s.writes as f64);
        requests.add(with("op", "other"), s.others as f64);
        bytes.add(with("op", "read"), s.read_bytes as f64);
        bytes.add(with("op", "write"), s.written_bytes as f64);
    }
    for f in [&conns, &conns_total, &requests, &bytes] {
        f.encode(enc)?;
    }
    if snaps.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(
        "export_request_duration_seconds",
        "NBD request latency, from the request read to its reply queued",
        None,
        MetricType::Histogram,
    )?;
    for (e, s) in &snaps {
        let labels = l(&[("export", &e.name), ("array", &e.array)]);
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .zip(&s.latency_buckets)
            .map(|(b, c)| (*b, *c))
            .collect();
        buckets.push((f64::INFINITY, *s.latency_buckets.last().unwrap_or(&0)));
        let count = s.latency_buckets.iter().sum();
        m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            s.latency_sum.as_secs_f64(),
            count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

/// The whole exposition now.
pub fn render(sources: &Arc<Mutex<Sources>>) -> String {
    let mut reg = Registry::with_prefix("damocles");
    reg.register_collector(Box::new(Scrape(sources.clone())));
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

/// Listens on `addr` and answers `GET /metrics` until `stop` turns true; returns the bound
/// address (port 0 picks one).
pub async fn start(
    addr: &str,
    sources: Arc<Mutex<Sources>>,
    mut stop: watch::Receiver<bool>,
) -> Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics: listening on {addr}"))?;
    let bound = l.local_addr()?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                acc = l.accept() => {
                    let Ok((s, _)) = acc else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    tokio::spawn(answer(s, sources.clone()));
                }
            }
        }
    });
    Ok(bound)
}

/// One HTTP/1 exchange: the request head (8 KiB at most, 5 s), one answer, close.
async fn answer(mut s: tokio::net::TcpStream, sources: Arc<Mutex<Sources>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(5), read).await,
        Ok(true)
    ) {
        return;
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) =
        if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
            let src = sources.clone();
            let body = tokio::task::spawn_blocking(move || render(&src))
                .await
                .unwrap_or_default();
            (
                "200 OK",
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                body,
            )
        } else {
            (
                "404 Not Found",
                "text/plain",
                "only /metrics is here\n".to_string(),
            )
        };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}
