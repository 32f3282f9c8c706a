//! Members that hang or crawl, on in-memory members: one that never returns once told to
//! (as a disk in uninterruptible sleep), one that delays every read. Reads must come back
//! from the others within the slow limit, writes and flushes complete degraded once the
//! member passes the fail limit (it is failed), and without redundancy the caller gets an
//! error at the fail limit — never a hang.

mod common;

use damocles_engine::{
    Array, AssembleOptions, CreateOptions, Dev, Level, MemMember, MemberDevice, MemberHealth,
};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const SLOW: Duration = Duration::from_millis(100);
const FAIL: Duration = Duration::from_millis(800);

/// A member that, once `hang` is set, never answers again; `delay_us` slows every read.
struct Stuck {
    inner: MemMember,
    hang: AtomicBool,
    delay_us: AtomicU64,
}

impl Stuck {
    fn new(name: &str, size: u64) -> Arc<Stuck> {
        Arc::new(Stuck {
            inner: MemMember::new(name, size),
            hang: AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
        })
    }

    fn gate(&self) {
        while self.hang.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl MemberDevice for Stuck {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.gate();
        let d = self.delay_us.load(Ordering::Relaxed);
        if d > 0 {
            std::thread::sleep(Duration::from_micros(d));
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.gate();
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.gate();
        self.inner.flush()
    }
}

fn open(level: Level, n: usize) -> (Arc<Array>, Vec<Arc<Stuck>>) {
    let members: Vec<Arc<Stuck>> = (0..n)
        .map(|i| Stuck::new(&format!("m{i}"), 24 * MIB))
        .collect();
    let devs = || members.iter().map(|m| m.clone() as Dev).collect::<Vec<_>>();
    let mut o = CreateOptions::new(level);
    o.stripe_unit = 16 << 10;
    o.chunk_size = Some(4 * MIB);
    drop(Array::create(devs(), &o).unwrap());
    let a = Array::assemble(
        devs(),
        AssembleOptions {
            slow_limit: Some(SLOW),
            fail_limit: Some(FAIL),
            ..Default::default()
        },
    )
    .unwrap();
    let a = Arc::new(a);
    a.spawn_watch();
    (a, members)
}

fn fill(a: &Array, seed: u64) -> Vec<u8> {
    let data = common::pattern(seed, a.size() as usize);
    a.write_at(&data, 0).unwrap();
    a.flush().unwrap();
    data
}

#[test]
fn raid5_reads_around_a_member_that_never_returns_and_fails_it() {
    let (a, m) = open(Level::Raid5, 4);
    let data = fill(&a, 1);
    m[2].hang.store(true, Ordering::Relaxed);
    // Reads of every stripe unit: each within the slow limit and a margin, all right.
    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    for off in (0..a.size()).step_by(64 << 10) {
        let mut b = vec![0u8; 64 << 10];
        let t = Instant::now();
        a.read_at(&mut b, off).unwrap();
        worst = worst.max(t.elapsed());
        assert!(b == data[off as usize..off as usize + b.len()], "at {off}");
    }
    assert!(
        worst < SLOW + Duration::from_millis(500),
        "a read took {worst:?}"
    );
    // Writes and a flush complete (degraded, once the member is failed).
    let more = common::pattern(2, 2 * MIB as usize);
    a.write_at(&more, MIB).unwrap();
    let t = Instant::now();
    a.flush().unwrap();
    assert!(
        t.elapsed() < FAIL + Duration::from_secs(2),
        "flush took {:?}",
        t.elapsed()
    );
    let deadline = t0 + FAIL + Duration::from_secs(3);
    while a.status().members[2].state != MemberHealth::Failed {
        assert!(
            Instant::now() < deadline,
            "member 2 not failed: {:?}",
            a.status().members[2]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let io = a.status().members[2].io.clone().unwrap();
    assert!(io.slow > 0 && io.in_flight > 0, "{io:?}");
    let mut back = vec![0u8; more.len()];
    a.read_at(&mut back, MIB).unwrap();
    assert!(back == more);
    // Status never waits for the member.
    let t = Instant::now();
    let _ = a.status();
    assert!(t.elapsed() < Duration::from_millis(200));
}

#[test]
fn raid0_gives_an_error_at_the_fail_limit_never_a_hang() {
    let (a, m) = open(Level::Raid0, 2);
    let data = fill(&a, 3);
    m[1].hang.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for off in (0..2 * MIB).step_by(16 << 10) {
        let mut b = vec![0u8; 16 << 10];
        let t = Instant::now();
        match a.read_at(&mut b, off) {
            Ok(()) => {
                assert!(b == data[off as usize..off as usize + b.len()]);
                ok += 1;
            }
            Err(e) => {
                assert!(t.elapsed() < FAIL + Duration::from_millis(500), "{e}");
                failed += 1;
            }
        }
    }
    assert!(ok > 0 && failed > 0, "ok {ok} failed {failed}");
    // raid0 cannot do without it: it stays, and says why nothing was failed.
    assert_ne!(a.status().members[1].state, MemberHealth::Failed);
}

#[test]
fn a_slow_member_is_passed_over_and_stays_in_service() {
    let (a, m) = open(Level::Raid5, 4);
    let data = fill(&a, 4);
    // Every read of member 0 takes 3x the slow limit: answered from parity instead.
    m[0].delay_us
        .store(3 * SLOW.as_micros() as u64, Ordering::Relaxed);
    let t = Instant::now();
    let mut back = vec![0u8; data.len()];
    for (i, piece) in back.chunks_mut(256 << 10).enumerate() {
        a.read_at(piece, (i * (256 << 10)) as u64).unwrap();
    }
    assert!(back == data);
    eprintln!(
        "read {} MiB around a slow member in {:?}",
        data.len() >> 20,
        t.elapsed()
    );
    let st = a.status();
    assert_eq!(st.members[0].state, MemberHealth::Ok, "slow is not failed");
    assert!(st.members[0].io.as_ref().unwrap().slow > 0);
}

#[test]
fn a_member_slow_for_a_minute_is_reported_once() {
    use damocles_engine::{Event, EventKind};
    let (a, m) = open(Level::Raid5, 4);
    let data = fill(&a, 5);
    let slow_events = Arc::new(std::sync::Mutex::new(Vec::<Event>::new()));
    let seen = slow_events.clone();
    a.set_event_sink(Arc::new(move |e: &Event| {
        if e.event == EventKind::MemberSlow {
            seen.lock().unwrap().push(e.clone());
        }
    }));
    // Member 1 answers every read in 1.5x the slow limit: slow, but never failed.
    m[1].delay_us
        .store(SLOW.as_micros() as u64 * 3 / 2, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut b = vec![0u8; 64 << 10];
    let mut off = 0u64;
    while slow_events.lock().unwrap().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(75),
            "no member-slow event after {:?}: {:?}",
            t0.elapsed(),
            a.status().members[1].io
        );
        a.read_at(&mut b, off).unwrap();
        assert!(b[..] == data[off as usize..off as usize + b.len()]);
        off = (off + b.len() as u64) % (a.size() - b.len() as u64);
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(59),
        "reported after {waited:?}, before a minute"
    );
    // Once, not at every tick.
    std::thread::sleep(Duration::from_secs(1));
    let events = slow_events.lock().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].member, Some(1));
    assert_eq!(a.status().members[1].state, MemberHealth::Ok);
}
