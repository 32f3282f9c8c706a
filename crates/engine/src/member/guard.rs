//! Every member request under a deadline. A member's requests run on its own worker
//! threads; the caller waits for the answer at most as long as the limits say, so one stuck
//! system call (a disk that hangs, a stalled USB bridge, a FUSE server that stopped) holds
//! one worker of that member and nothing else: not the other members, not the caller's
//! locks, not the NBD server, the control socket or shutdown.
//!
//! Two limits (per array, [`Limits`]): past the *slow* limit a read that the array's
//! redundancy can answer returns [`slow`] so the caller reads the other members instead
//! (the stuck read stays counted in flight); past the *fail* limit any request returns
//! `TimedOut`, which the layers above treat as an I/O error (the member is failed when the
//! array can do without it). Buffers cross to the worker by copy, since a worker may
//! outlive its caller's wait (into page-aligned buffers, which `O_DIRECT` members use as
//! they are). A read whose bytes are already at hand (in the page cache:
//! [`MemberDevice::read_nowait`]) cannot wait for the device and is answered on the
//! caller's thread, without the hand-off. Writes to members that ask for it (`O_DIRECT`)
//! are answered once a worker has them, and flushes wait for them (`behind.rs`).

use super::aligned::AlignedBuf;
use super::behind::Behind;
use super::stats::{MemberIo, Pending, Stats};
use super::{Dev, MemberDevice};
use crate::error::Op;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// The default slow limit: a read that takes longer is answered from the other members.
pub const DEFAULT_SLOW: Duration = Duration::from_secs(2);
/// The default fail limit (the kernel's SCSI command timeout): a member that does not
/// answer within it is failed.
pub const DEFAULT_FAIL: Duration = Duration::from_secs(30);
/// Worker threads per member, at most (started as requests need them, stopped when idle).
const MAX_WORKERS: usize = 32;
/// An idle worker above the first stops after this long.
const IDLE: Duration = Duration::from_secs(20);

/// The slow and fail limits of a member's requests (changeable while it runs).
#[derive(Debug)]
pub struct Limits {
    slow_ms: AtomicU64,
    fail_ms: AtomicU64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(DEFAULT_SLOW, DEFAULT_FAIL)
    }
}

impl Limits {
    pub fn new(slow: Duration, fail: Duration) -> Limits {
        let l = Limits {
            slow_ms: AtomicU64::new(0),
            fail_ms: AtomicU64::new(0),
        };
        l.set(slow, fail);
        l
    }

    /// Sets both limits (at least 1 ms each; the slow limit at most the fail limit).
    pub fn set(&self, slow: Duration, fail: Duration) {
        let fail = (fail.as_millis() as u64).max(1);
        let slow = (slow.as_millis() as u64).clamp(1, fail);
        self.fail_ms.store(fail, Ordering::Relaxed);
        self.slow_ms.store(slow, Ordering::Relaxed);
    }

    pub fn slow(&self) -> Duration {
        Duration::from_millis(self.slow_ms.load(Ordering::Relaxed))
    }

    pub fn fail(&self) -> Duration {
        Duration::from_millis(self.fail_ms.load(Ordering::Relaxed))
    }
}

/// The payload of the error a read returns at the slow limit.
#[derive(Debug)]
struct Slow(Duration);

impl std::fmt::Display for Slow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no answer within the slow limit ({:?})", self.0)
    }
}

impl std::error::Error for Slow {}

/// Whether `e` is a read that passed the slow limit (answer it from the other members).
pub fn is_slow(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Slow>())
}

type Job = Box<dyn FnOnce(&dyn MemberDevice) + Send>;

struct Queue {
    jobs: VecDeque<Job>,
    idle: usize,
    workers: usize,
    stop: bool,
}

struct Shared {
    dev: Dev,
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Stats,
    limits: Limits,
    /// Buffers handed between callers and workers, kept for reuse. Page-aligned, so a
    /// member opened `O_DIRECT` does its I/O straight into them.
    buffers: Mutex<Vec<AlignedBuf>>,
    /// Writes answered before the device did (members that ask for it: `behind.rs`).
    behind: Behind,
}

/// One answer, handed from a worker to the caller waiting for it.
struct Answer<R> {
    value: Mutex<Option<R>>,
    ready: Condvar,
}

/// A member whose requests run under the array's limits (see the module docs).
pub struct Guarded {
    name: String,
    size: u64,
    shared: Arc<Shared>,
}

impl Guarded {
    /// Puts `dev` under the limits `(slow, fail)`; a member already guarded gets these
    /// limits and is returned as it is.
    pub fn wrap(dev: Dev, (slow, fail): (Duration, Duration)) -> Dev {
        if let Some(g) = dev.guard() {
            g.limits().set(slow, fail);
            return dev;
        }
        Arc::new(Guarded {
            name: dev.name().to_string(),
            size: dev.size(),
            shared: Arc::new(Shared {
                dev,
                queue: Mutex::new(Queue {
                    jobs: VecDeque::new(),
                    idle: 0,
                    workers: 0,
                    stop: false,
                }),
                wake: Condvar::new(),
                stats: Stats::default(),
                limits: Limits::new(slow, fail),
                buffers: Mutex::new(Vec::new()),
                behind: Behind::default(),
            }),
        })
    }

    /// The request figures `status` shows.
    pub fn io(&self) -> MemberIo {
        self.shared.stats.snapshot()
    }

    /// The oldest request still in flight.
    pub fn oldest(&self) -> Option<Pending> {
        self.shared.stats.oldest()
    }

    /// p99 latency over the last minute.
    pub fn p99(&self) -> Option<Duration> {
        self.shared.stats.p99()
    }

    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Counts a block of this member that failed its checksum.
    pub fn count_checksum_error(&self) {
        self.shared
            .stats
            .checksum_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    fn submit(&self, job: Job) {
        let sh = &self.shared;
        let mut q = sh.queue.lock();
        q.jobs.push_back(job);
        if q.idle == 0 && q.workers < MAX_WORKERS {
            q.workers += 1;
            drop(q);
            let me = sh.clone();
            let spawned = std::thread::Builder::new()
                .name("damocles-io".into())
                .spawn(move || worker(me));
            if spawned.is_err() {
                // No thread: run it here (the deadline is lost, the request is not).
                let mut q = sh.queue.lock();
                q.workers -= 1;
                if let Some(job) = q.jobs.pop_back() {
                    drop(q);
                    job(sh.dev.as_ref());
                }
            }
        } else {
            drop(q);
            sh.wake.notify_one();
        }
    }

    /// Runs `f` on a worker; waits for its answer at most `patience` (the fail limit when
    /// `None`). `f`'s own error is counted by kind; a wait given up on is not an answer.
    fn call<R: Send + 'static>(
        &self,
        op: Op,
        offset: u64,
        slow: bool,
        f: impl FnOnce(&dyn MemberDevice) -> (io::Result<()>, R) + Send + 'static,
    ) -> Result<(io::Result<()>, R), io::Error> {
        self.call_inner(op, offset, slow, None, f)
    }

    /// [`Self::call`]; with `progress`, a request made of pieces (a list of writes): `f`
    /// stores the time each piece ends there and takes an in-flight ticket per piece, so
    /// the limit applies to each piece, not to the whole list (a slow member stays slow,
    /// not failed, however long the list).
    fn call_inner<R: Send + 'static>(
        &self,
        op: Op,
        offset: u64,
        slow: bool,
        progress: Option<Arc<Mutex<Instant>>>,
        f: impl FnOnce(&dyn MemberDevice) -> (io::Result<()>, R) + Send + 'static,
    ) -> Result<(io::Result<()>, R), io::Error> {
        let fail = self.shared.limits.fail();
        if let Some(p) = self.oldest().filter(|p| p.age > fail) {
            // The member has not answered for longer than the fail limit: do not queue
            // behind the stuck request, give this one up at once.
            self.shared.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the member has not answered a {} for {} s (fail limit {} s)",
                    p.op,
                    p.age.as_secs(),
                    fail.as_secs_f64()
                ),
            ));
        }
        let answer = Arc::new(Answer {
            value: Mutex::new(None),
            ready: Condvar::new(),
        });
        let ticket = progress
            .is_none()
            .then(|| self.shared.stats.begin(op, offset));
        let start = ticket.map_or_else(Instant::now, |t| t.1);
        let (a, sh) = (answer.clone(), self.shared.clone());
        self.submit(Box::new(move |dev| {
            let out = f(dev);
            if let Some(t) = ticket {
                sh.stats.end(t, op, out.0.as_ref().err());
            }
            *a.value.lock() = Some(out);
            a.ready.notify_one();
        }));
        let patience = if slow {
            self.shared.limits.slow()
        } else {
            fail
        };
        let mut v = answer.value.lock();
        let mut deadline = start + patience;
        while v.is_none() {
            if answer.ready.wait_until(&mut v, deadline).timed_out() && v.is_none() {
                // A piece ended since: the next one has the whole limit from then.
                if let Some(last) = progress.as_ref().map(|p| *p.lock() + patience) {
                    if last > deadline {
                        deadline = last;
                        continue;
                    }
                }
                drop(v);
                return Err(if slow {
                    self.shared.stats.slow.fetch_add(1, Ordering::Relaxed);
                    io::Error::other(Slow(patience))
                } else {
                    self.shared.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no answer within the fail limit ({} s); the request was given up",
                            patience.as_secs_f64()
                        ),
                    )
                });
            }
        }
        Ok(v.take().expect("answered"))
    }

    fn buffer(&self, len: usize) -> AlignedBuf {
        self.shared.buffer(len)
    }

    fn give_back(&self, b: AlignedBuf) {
        self.shared.give_back(b)
    }

    /// The fail limit from now.
    fn fail_deadline(&self) -> std::time::Instant {
        std::time::Instant::now() + self.shared.limits.fail()
    }

    /// Fails at once when the oldest request has gone unanswered past the fail limit.
    fn check_answering(&self) -> io::Result<()> {
        let sh = &self.shared;
        if let Some(p) = self.oldest().filter(|p| p.age > sh.limits.fail()) {
            sh.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the member has not answered a {} for {} s",
                    p.op,
                    p.age.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// Hands the first `len` bytes of `b` to a worker and answers (see `behind.rs`).
    fn hand_behind(&self, b: AlignedBuf, len: usize, offset: u64) -> io::Result<()> {
        let sh = &self.shared;
        let id = sh.behind.begin(offset, len as u64, self.fail_deadline())?;
        let ticket = sh.stats.begin(Op::Write, offset);
        let me = sh.clone();
        self.submit(Box::new(move |dev| {
            let r = dev.write_at(&b[..len], offset);
            me.stats.end(ticket, Op::Write, r.as_ref().err());
            if r.is_ok() {
                me.stats.count_write(len);
            }
            me.give_back(b);
            me.behind.done(id, r);
        }));
        Ok(())
    }
}

impl Shared {
    fn buffer(&self, len: usize) -> AlignedBuf {
        let mut pool = self.buffers.lock();
        match pool.iter().position(|b| b.len() >= len) {
            Some(i) => pool.swap_remove(i),
            None => {
                drop(pool);
                AlignedBuf::zeroed(len)
            }
        }
    }

    fn give_back(&self, b: AlignedBuf) {
        let mut pool = self.buffers.lock();
        if pool.len() < 64 && b.len() <= 8 << 20 {
            pool.push(b);
        }
    }
}

impl Guarded {
    fn read_within(&self, bufs: &mut [&mut [u8]], offset: u64, slow: bool) -> io::Result<()> {
        // Bytes at hand (page cache) are read here, on the caller's thread: such a read
        // cannot wait for the device, so it needs no worker and no deadline.
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let t = std::time::Instant::now();
        // A write of these bytes still running goes first.
        let patience = if slow {
            self.shared.limits.slow()
        } else {
            self.shared.limits.fail()
        };
        if let Err(e) = self
            .shared
            .behind
            .settle(offset, total as u64, t + patience)
        {
            return Err(if slow {
                self.shared.stats.slow.fetch_add(1, Ordering::Relaxed);
                io::Error::other(Slow(patience))
            } else {
                e
            });
        }
        if self.shared.dev.read_nowait(bufs, offset) {
            self.shared.stats.answered_at_once(t);
            self.shared.stats.count_read(total);
            return Ok(());
        }
        if slow {
            // A member with a request older than the slow limit is slow now: read the
            // others at once rather than wait the slow limit again.
            let patience = self.shared.limits.slow();
            if self.oldest().is_some_and(|p| p.age > patience) {
                self.shared.stats.slow.fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::other(Slow(patience)));
            }
        }
        let b = self.buffer(total);
        let (r, b) = self.call(Op::Read, offset, slow, move |dev| {
            let mut b = b;
            let r = dev.read_at(&mut b[..total], offset);
            (r, b)
        })?;
        if r.is_ok() {
            let mut at = 0;
            for dst in bufs.iter_mut() {
                dst.copy_from_slice(&b[at..at + dst.len()]);
                at += dst.len();
            }
            self.shared.stats.count_read(total);
        }
        self.give_back(b);
        r
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.shared.queue.lock().stop = true;
        self.shared.wake.notify_all();
    }
}

fn worker(sh: Arc<Shared>) {
    let mut q = sh.queue.lock();
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            job(sh.dev.as_ref());
            q = sh.queue.lock();
            continue;
        }
        if q.stop {
            break;
        }
        q.idle += 1;
        let timed_out = sh.wake.wait_for(&mut q, IDLE).timed_out();
        q.idle -= 1;
        if timed_out && q.jobs.is_empty() && q.workers > 1 {
            break;
        }
    }
    q.workers -= 1;
}

impl MemberDevice for Guarded {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_within(&mut [buf], offset, false)
    }
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        self.read_within(bufs, offset, false)
    }
    fn read_hedged(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        self.read_within(bufs, offset, true)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // Copied into one of the workers' buffers: a worker may outlive this call.
        let mut b = self.buffer(buf.len());
        b[..buf.len()].copy_from_slice(buf);
        self.write_aligned(b, buf.len(), offset)
    }
    fn write_owned(&self, buf: Vec<u8>, offset: u64) -> super::WriteOwned {
        if self.shared.dev.write_behind() {
            // Copied into an aligned buffer (O_DIRECT needs one): the caller's is free now.
            let r = self.write_at(&buf, offset);
            return (r, Some(buf));
        }
        let len = buf.len();
        match self.call(Op::Write, offset, false, move |dev| {
            (dev.write_at(&buf, offset), buf)
        }) {
            Ok((r, b)) => {
                if r.is_ok() {
                    self.shared.stats.count_write(len);
                }
                (r, Some(b))
            }
            Err(e) => (Err(e), None),
        }
    }
    fn aligned_buffer(&self, len: usize) -> AlignedBuf {
        self.buffer(len)
    }
    fn write_aligned(&self, buf: AlignedBuf, len: usize, offset: u64) -> io::Result<()> {
        if self.shared.dev.write_behind() {
            self.check_answering()?;
            return self.hand_behind(buf, len, offset);
        }
        let (r, b) = self.call(Op::Write, offset, false, move |dev| {
            (dev.write_at(&buf[..len], offset), buf)
        })?;
        self.give_back(b);
        if r.is_ok() {
            self.shared.stats.count_write(len);
        }
        r
    }
    fn write_many(&self, writes: Vec<(u64, Vec<u8>)>) -> Result<(), (u64, io::Error)> {
        let Some(&(first, _)) = writes.first() else {
            return Ok(());
        };
        if self.shared.dev.write_behind() {
            for (off, b) in &writes {
                self.write_at(b, *off).map_err(|e| (*off, e))?;
            }
            return Ok(());
        }
        let sh = self.shared.clone();
        let progress = Arc::new(Mutex::new(Instant::now()));
        let done = progress.clone();
        // One hand-off for the list; each write is its own request to the limits and the
        // figures (a ticket each, its end noted as progress).
        match self.call_inner(Op::Write, first, false, Some(progress), move |dev| {
            for (off, b) in &writes {
                *done.lock() = Instant::now();
                let ticket = sh.stats.begin(Op::Write, *off);
                let r = dev.write_at(b, *off);
                sh.stats.end(ticket, Op::Write, r.as_ref().err());
                if let Err(e) = r {
                    return (Err(e), Some(*off));
                }
                sh.stats.count_write(b.len());
            }
            (Ok(()), None)
        }) {
            Ok((Ok(()), _)) => Ok(()),
            Ok((Err(e), at)) => Err((at.unwrap_or(first), e)),
            Err(e) => Err((first, e)),
        }
    }
    fn write_behind(&self) -> bool {
        // Its own writes are answered early already; the layers above need not know.
        false
    }
    fn flush(&self) -> io::Result<()> {
        // Every write answered early is done (or its error told) before the flush.
        self.shared.behind.drain(self.fail_deadline())?;
        self.call(Op::Flush, 0, false, |dev| (dev.flush(), ()))?.0
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        // A hint: nobody waits for it.
        self.submit(Box::new(move |dev| dev.start_writeback(offset, len)));
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.shared
            .behind
            .settle(offset, len, self.fail_deadline())?;
        if let Some(e) = self.shared.behind.take_error() {
            return Err(e);
        }
        self.call(Op::Zero, offset, false, move |dev| {
            (dev.write_zeroes(offset, len), ())
        })?
        .0
    }
    fn guard(&self) -> Option<&Guarded> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::MemMember;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    /// A member whose requests wait while `hold` is set.
    struct Held {
        inner: MemMember,
        hold: Arc<AtomicBool>,
        behind: bool,
    }

    impl Held {
        fn wait(&self) {
            while self.hold.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    impl MemberDevice for Held {
        fn name(&self) -> &str {
            "held"
        }
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.wait();
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.wait();
            self.inner.write_at(buf, offset)
        }
        fn write_behind(&self) -> bool {
            self.behind
        }
        fn flush(&self) -> io::Result<()> {
            self.wait();
            Ok(())
        }
    }

    fn held() -> (Dev, Arc<AtomicBool>) {
        held_with(false)
    }

    fn held_with(behind: bool) -> (Dev, Arc<AtomicBool>) {
        let hold = Arc::new(AtomicBool::new(false));
        let limits = (Duration::from_millis(50), Duration::from_millis(300));
        let dev: Dev = Arc::new(Held {
            inner: MemMember::new("held", 1 << 20),
            hold: hold.clone(),
            behind,
        });
        (Guarded::wrap(dev, limits), hold)
    }

    #[test]
    fn answers_pass_through() {
        let (g, _) = held();
        g.write_at(b"hello", 100).unwrap();
        let (mut a, mut b) = ([0u8; 2], [0u8; 3]);
        g.read_vectored_at(&mut [&mut a, &mut b], 100).unwrap();
        assert_eq!((&a, &b), (b"he", b"llo"));
        g.flush().unwrap();
        let io = g.guard().unwrap().io();
        assert_eq!((io.in_flight, io.requests_last_minute), (0, 3));
    }

    #[test]
    fn a_stuck_member_gives_slow_then_timeout_and_stays_in_flight() {
        let (g, hold) = held();
        hold.store(true, Ordering::Relaxed);
        let t = Instant::now();
        let mut b = [0u8; 8];
        let e = g.read_hedged(&mut [&mut b], 0).unwrap_err();
        assert!(is_slow(&e), "{e}");
        assert!(t.elapsed() < Duration::from_millis(250));
        let e = g.flush().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        let guard = g.guard().unwrap();
        let io = guard.io();
        assert_eq!((io.in_flight, io.slow, io.timeouts), (2, 1, 1));
        assert!(guard.oldest().unwrap().age >= Duration::from_millis(300));
        // Past the fail limit, a new request is given up at once.
        let t = Instant::now();
        let e = g.write_at(b"x", 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() < Duration::from_millis(100));
        // Once the member answers again, requests go through.
        hold.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(guard.io().in_flight, 0);
        g.write_at(b"x", 0).unwrap();
    }

    #[test]
    fn an_owned_write_hands_its_buffer_over_and_back() {
        let (g, hold) = held();
        let mut buf = b"abcde".to_vec();
        buf.reserve(100);
        let ptr = buf.as_ptr();
        let (r, back) = g.write_owned(buf, 200);
        r.unwrap();
        // The same allocation comes back, untouched: it was not copied.
        let back = back.expect("answered");
        assert_eq!((back.as_ptr(), &back[..]), (ptr, &b"abcde"[..]));
        let mut got = [0u8; 8];
        g.read_at(&mut got, 200).unwrap();
        assert_eq!(&got, b"abcde\0\0\0");
        assert_eq!(g.guard().unwrap().io().requests_last_minute, 2);
        // A member that does not answer keeps the buffer: the write times out.
        hold.store(true, Ordering::Relaxed);
        let (r, back) = g.write_owned(vec![1u8; 8], 0);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(back.is_none());
        hold.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
        g.read_at(&mut got, 0).unwrap();
        assert_eq!(got, [1u8; 8], "the write given up on still happened");
    }

    #[test]
    fn writes_behind_are_answered_early_ordered_and_flushed() {
        let (g, hold) = held_with(true);
        hold.store(true, Ordering::Relaxed);
        let t = Instant::now();
        g.write_at(b"first", 100).unwrap();
        g.write_at(b"other", 4000).unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(40),
            "a write waited for the device"
        );
        assert_eq!(g.guard().unwrap().io().in_flight, 2);
        // An overlapping write, a read and a flush each wait for what runs under them.
        let g2 = g.clone();
        let second = std::thread::spawn(move || g2.write_at(b"SECOND", 102));
        let g3 = g.clone();
        let reader = std::thread::spawn(move || {
            let mut b = [0u8; 8];
            g3.read_at(&mut b, 100).map(|()| b)
        });
        std::thread::sleep(Duration::from_millis(30));
        assert!(!second.is_finished() && !reader.is_finished());
        hold.store(false, Ordering::Relaxed);
        second.join().unwrap().unwrap();
        let b = reader.join().unwrap().unwrap();
        // The read ran after the first write, before or after the second.
        assert!(&b == b"first\0\0\0" || &b == b"fiSECOND", "{b:?}");
        g.flush().unwrap();
        let mut b = [0u8; 8];
        g.read_at(&mut b, 100).unwrap();
        assert_eq!(&b, b"fiSECOND");
        assert_eq!(g.guard().unwrap().io().in_flight, 0);
    }

    #[test]
    fn a_write_behind_error_is_told_at_the_flush_and_a_stuck_one_times_out() {
        let (g, hold) = held_with(true);
        // Past the member's end: the device refuses it, after the caller was answered.
        g.write_at(b"x", 1 << 20).unwrap();
        let e = g.flush().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        g.flush().unwrap();
        hold.store(true, Ordering::Relaxed);
        g.write_at(b"y", 0).unwrap();
        let t = Instant::now();
        let e = g.flush().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() >= Duration::from_millis(250));
        hold.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        g.flush().unwrap();
    }
}
