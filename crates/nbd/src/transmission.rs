//! Transmission phase, served by blocking threads of the connection's own
//! (leaders/followers, as in nbdkit): the thread holding the reader role parses
//! one request, passes the role on, runs the request and writes its reply
//! itself. Replies go out whole, possibly out of order, and a slow request
//! holds up only its own thread.
//!
//! Why not tokio here: a reader task handing each request to the blocking pool
//! and each reply to a writer task woke three threads per request, and those
//! wake-ups were over half the server's time on small requests.

use std::future::Future;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::device::{BlockDevice, Extent};
use crate::handshake::Negotiated;
use crate::transport::Transport;
use crate::wire::{self, *};
use crate::{NbdError, ServerConfig};

/// Most descriptors we put in one block status chunk (spec: SHOULD NOT exceed 2^20).
const MAX_STATUS_DESCRIPTORS: usize = 8192;

/// Recycled I/O buffers: a reused buffer is already initialised, so reads and write
/// payloads need neither fresh zeroed memory nor page faults.
mod pool {
    use std::sync::Mutex;

    static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    const KEEP: usize = 64;
    const KEEP_MAX_CAP: usize = 33 << 20;
    /// Most bytes kept in all: without it, 64 buffers of up to 33 MiB could pin
    /// 2 GiB long after the clients that needed them are gone.
    const KEEP_TOTAL: usize = 128 << 20;

    /// A buffer of exactly `len` bytes (contents unspecified).
    pub fn take(len: usize) -> Vec<u8> {
        let found = {
            let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        let mut b = found.unwrap_or_default();
        b.resize(len, 0);
        b
    }

    pub fn give(b: Vec<u8>) {
        if b.capacity() > KEEP_MAX_CAP || b.capacity() < 4096 {
            return;
        }
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        let kept: usize = free.iter().map(Vec::capacity).sum();
        if free.len() < KEEP && kept + b.capacity() <= KEEP_TOTAL {
            free.push(b);
        }
    }
}

/// A validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Disc,
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Cache,
    WriteZeroes {
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
}

type Reject = (NbdErrno, &'static str);

/// Check a request against the negotiated state and export size (pure).
pub(crate) fn validate(h: &RequestHeader, n: &Negotiated, max_request: u32) -> Result<Op, Reject> {
    if h.command == CMD_DISC {
        // No reply is possible, so flags and fields do not matter.
        return Ok(Op::Disc);
    }
    let mut allowed = CMD_FLAG_FUA;
    match h.command {
        CMD_READ if n.structured => allowed |= CMD_FLAG_DF,
        CMD_WRITE_ZEROES => allowed |= CMD_FLAG_NO_HOLE,
        CMD_BLOCK_STATUS => allowed |= CMD_FLAG_REQ_ONE,
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_CACHE => {}
        _ => return Err((NbdErrno::Inval, "unknown command")),
    }
    if h.flags & !allowed != 0 {
        return Err((NbdErrno::Inval, "invalid command flags"));
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    let writes = matches!(h.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && n.read_only {
        return Err((NbdErrno::Perm, "export is read-only"));
    }
    let in_bounds = h
        .offset
        .checked_add(u64::from(h.len))
        .is_some_and(|end| end <= n.size);
    let (offset, len) = (h.offset, h.len);
    match h.command {
        CMD_FLUSH => {
            return if offset != 0 || len != 0 {
                Err((NbdErrno::Inval, "flush offset and length must be zero"))
            } else {
                Ok(Op::Flush)
            };
        }
        CMD_READ if len > max_request => {
            // Structured replies allow EOVERFLOW for oversized reads.
            let e = if n.structured {
                NbdErrno::Overflow
            } else {
                NbdErrno::Inval
            };
            return Err((e, "read larger than maximum payload"));
        }
        CMD_WRITE if len > max_request => {
            return Err((NbdErrno::Inval, "write larger than maximum payload"))
        }
        CMD_BLOCK_STATUS if n.base_allocation.is_none() => {
            return Err((NbdErrno::Inval, "no metadata context negotiated"))
        }
        CMD_BLOCK_STATUS if len == 0 => return Err((NbdErrno::Inval, "zero-length block status")),
        _ => {}
    }
    if !in_bounds {
        let e = if matches!(h.command, CMD_WRITE | CMD_WRITE_ZEROES) {
            NbdErrno::NoSpc
        } else {
            NbdErrno::Inval
        };
        return Err((e, "request beyond end of export"));
    }
    Ok(match h.command {
        CMD_READ => Op::Read { offset, len },
        CMD_WRITE => Op::Write { offset, len, fua },
        CMD_TRIM => Op::Trim { offset, len, fua },
        CMD_CACHE => Op::Cache,
        CMD_WRITE_ZEROES => Op::WriteZeroes {
            offset,
            len,
            may_trim: h.flags & CMD_FLAG_NO_HOLE == 0,
            fua,
        },
        CMD_BLOCK_STATUS => Op::BlockStatus {
            offset,
            len,
            req_one: h.flags & CMD_FLAG_REQ_ONE != 0,
        },
        _ => unreachable!("filtered above"),
    })
}

/// Encode an error reply in the negotiated style.
fn error_reply(
    out: &mut Vec<u8>,
    n: &Negotiated,
    cookie: u64,
    err: NbdErrno,
    msg: &str,
    offset: Option<u64>,
) {
    if n.structured {
        wire::encode_error_chunk(out, cookie, err, msg, offset, true);
    } else {
        wire::encode_simple_reply_header(out, err.code(), cookie);
    }
}

fn ok_reply(cookie: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(SIMPLE_REPLY_HEADER_LEN);
    wire::encode_simple_reply_header(&mut v, 0, cookie);
    v
}

/// Encode a base:allocation chunk from device extents, clipped to the request.
pub(crate) fn block_status_reply(
    cookie: u64,
    ctx: u32,
    len: u32,
    req_one: bool,
    exts: &[Extent],
) -> Vec<u8> {
    let want = u64::from(len);
    let mut descs: Vec<(u32, u32)> = Vec::new();
    let mut total = 0u64;
    for e in exts {
        if total >= want || descs.len() >= MAX_STATUS_DESCRIPTORS {
            break;
        }
        if e.len == 0 {
            continue;
        }
        let l = e.len.min(want - total) as u32;
        let flags = if e.hole { STATE_HOLE } else { 0 } | if e.zero { STATE_ZERO } else { 0 };
        match descs.last_mut() {
            Some(last) if last.1 == flags => last.0 += l,
            _ => descs.push((l, flags)),
        }
        total += u64::from(l);
    }
    if descs.is_empty() {
        // Status 0 is always a safe answer, and at least one descriptor is required.
        descs.push((len, 0));
    }
    if req_one {
        descs.truncate(1);
    }
    let mut out = Vec::with_capacity(STRUCTURED_REPLY_HEADER_LEN + 4 + descs.len() * 8);
    wire::encode_chunk_header(
        &mut out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        (4 + descs.len() * 8) as u32,
    );
    out.extend_from_slice(&ctx.to_be_bytes());
    for (l, f) in descs {
        out.extend_from_slice(&l.to_be_bytes());
        out.extend_from_slice(&f.to_be_bytes());
    }
    out
}

/// Run a device call, turning panics into EIO so a buggy device cannot leave
/// a request unanswered.
fn guarded<T>(f: impl FnOnce() -> std::io::Result<T>) -> Result<T, (NbdErrno, String)> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err((NbdErrno::from_io(&e), format!("device error: {e}"))),
        Err(_) => Err((NbdErrno::Io, "device error: internal failure".to_owned())),
    }
}

/// Alignment of READ payloads in their buffer: the kernel's copy into user memory
/// (`rep movsb`) ran 2-3x slower here into a destination that is not cache-line aligned,
/// and the reply header in front of the payload made it so.
const PAYLOAD_ALIGN: usize = 4096;

/// An encoded reply: `buf[at]`.
struct Out {
    buf: Vec<u8>,
    at: Range<usize>,
}

impl Out {
    fn whole(buf: Vec<u8>) -> Out {
        let at = 0..buf.len();
        Out { buf, at }
    }
}

fn device_error(
    n: &Negotiated,
    cookie: u64,
    op: Op,
    (e, msg): (NbdErrno, String),
    offset: Option<u64>,
) -> Vec<u8> {
    tracing::debug!(cookie, ?op, ?e, %msg, "device request failed");
    let mut v = Vec::new();
    error_reply(&mut v, n, cookie, e, &msg, offset);
    v
}

fn read_reply(dev: &dyn BlockDevice, n: &Negotiated, cookie: u64, offset: u64, len: u32) -> Out {
    let len = len as usize;
    let hdr = if n.structured {
        STRUCTURED_REPLY_HEADER_LEN + 8
    } else {
        SIMPLE_REPLY_HEADER_LEN
    };
    if len == 0 {
        let mut v = Vec::new();
        if n.structured {
            wire::encode_chunk_header(&mut v, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
        } else {
            wire::encode_simple_reply_header(&mut v, 0, cookie);
        }
        return Out::whole(v);
    }
    // Read straight into the reply buffer, the header right before the payload.
    let mut buf = pool::take(hdr + len + PAYLOAD_ALIGN);
    let start = buf[hdr..].as_ptr().align_offset(PAYLOAD_ALIGN);
    let at = start..start + hdr + len;
    if let Err(e) = guarded(|| dev.read_at(&mut buf[at.start + hdr..at.end], offset)) {
        pool::give(buf);
        let op = Op::Read {
            offset,
            len: len as u32,
        };
        return Out::whole(device_error(n, cookie, op, e, Some(offset)));
    }
    let mut h = Vec::with_capacity(hdr);
    if n.structured {
        // All data is in hand, so this content chunk can be the final one.
        wire::encode_chunk_header(
            &mut h,
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_DATA,
            cookie,
            (8 + len) as u32,
        );
        h.extend_from_slice(&offset.to_be_bytes());
    } else {
        wire::encode_simple_reply_header(&mut h, 0, cookie);
    }
    buf[at.start..at.start + hdr].copy_from_slice(&h);
    Out { buf, at }
}

/// Blocking work for one request; returns the encoded reply.
fn execute(dev: &dyn BlockDevice, n: &Negotiated, cookie: u64, op: Op, payload: Vec<u8>) -> Out {
    let fail = |e, offset| device_error(n, cookie, op, e, offset);
    let v = match op {
        Op::Read { offset, len } => return read_reply(dev, n, cookie, offset, len),
        Op::Write { offset, fua, .. } => match guarded(|| dev.write_owned(payload, offset, fua)) {
            Ok(spare) => {
                for b in spare {
                    pool::give(b);
                }
                ok_reply(cookie)
            }
            Err(e) => fail(e, None),
        },
        Op::Flush => match guarded(|| dev.flush()) {
            Ok(()) => ok_reply(cookie),
            Err(e) => fail(e, None),
        },
        Op::Trim { offset, len, fua } => {
            let r = guarded(|| {
                dev.trim(offset, u64::from(len))?;
                if fua {
                    dev.flush()?;
                }
                Ok(())
            });
            match r {
                Ok(()) => ok_reply(cookie),
                Err(e) => fail(e, None),
            }
        }
        Op::WriteZeroes {
            offset,
            len,
            may_trim,
            fua,
        } => match guarded(|| dev.write_zeroes(offset, u64::from(len), may_trim, fua)) {
            Ok(()) => ok_reply(cookie),
            Err(e) => fail(e, None),
        },
        Op::BlockStatus {
            offset,
            len,
            req_one,
        } => {
            let ctx = n.base_allocation.unwrap_or(0);
            match guarded(|| dev.block_status(offset, u64::from(len))) {
                Ok(exts) => block_status_reply(cookie, ctx, len, req_one, &exts),
                Err(e) => fail(e, None),
            }
        }
        Op::Cache | Op::Disc => ok_reply(cookie),
    };
    Out::whole(v)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its state consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-connection bound on requests, and on READ/WRITE payload bytes, from
/// parsing a request until its reply has been handed to the socket.
struct Limits {
    st: Mutex<LimitState>,
    cv: Condvar,
}

struct LimitState {
    requests: usize,
    bytes: usize,
    /// Only the reader-role holder ever waits.
    waiting: bool,
}

impl Limits {
    /// `bytes` must not exceed the budget (ensured by `ServerConfig::validate`).
    fn acquire(self: &Arc<Self>, bytes: usize) -> Permit {
        let mut st = lock(&self.st);
        while st.requests == 0 || st.bytes < bytes {
            st.waiting = true;
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.waiting = false;
        st.requests -= 1;
        st.bytes -= bytes;
        Permit {
            limits: self.clone(),
            bytes,
        }
    }
}

struct Permit {
    limits: Arc<Limits>,
    bytes: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = lock(&self.limits.st);
        st.requests += 1;
        st.bytes += self.bytes;
        if st.waiting {
            self.limits.cv.notify_one();
        }
    }
}

/// A fully-encoded reply; its permit is released once it reached the socket.
struct Reply {
    out: Out,
    _permit: Permit,
}

impl Reply {
    fn bytes(&self) -> &[u8] {
        &self.out.buf[self.out.at.clone()]
    }
}

struct Request {
    cookie: u64,
    op: Result<Op, Reject>,
    command: u16,
    payload: Vec<u8>,
    permit: Permit,
}

/// Buffered request input. Whoever holds it has the reader role.
struct Rx {
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// No more requests will be read (EOF, DISC, stop or error).
    done: bool,
}

impl Rx {
    fn read<T: Transport>(&mut self, t: &T, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.end {
            if out.len() >= self.buf.len() {
                // Large payloads go straight to their buffer.
                return t.read(out);
            }
            self.end = t.read(&mut self.buf)?;
            self.pos = 0;
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }

    /// Fill `out`; `Ok(false)` on EOF before the first byte.
    fn read_exact_or_eof<T: Transport>(&mut self, t: &T, out: &mut [u8]) -> io::Result<bool> {
        let mut got = 0;
        while got < out.len() {
            match self.read(t, &mut out[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn read_exact<T: Transport>(&mut self, t: &T, out: &mut [u8]) -> io::Result<()> {
        if self.read_exact_or_eof(t, out)? {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }

    fn skip<T: Transport>(&mut self, t: &T, mut n: u64) -> io::Result<()> {
        let mut sink = [0u8; 4096];
        while n > 0 {
            let k = n.min(sink.len() as u64) as usize;
            self.read_exact(t, &mut sink[..k])?;
            n -= k as u64;
        }
        Ok(())
    }
}

/// Replies waiting for the socket. One thread at a time writes, taking along
/// whatever others queued meanwhile, so nobody sleeps on the socket lock.
#[derive(Default)]
struct Tx {
    queue: Vec<Reply>,
    busy: bool,
    broken: bool,
}

/// Most replies per `writev`.
const MAX_IOV: usize = 64;

fn write_replies<T: Transport>(t: &T, replies: &[Reply]) -> io::Result<()> {
    // Next unwritten byte: replies[i].buf[off].
    let (mut i, mut off) = (0, 0);
    while i < replies.len() {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = (replies.len() - i).min(MAX_IOV);
        for (k, r) in replies[i..i + n].iter().enumerate() {
            iov[k] = IoSlice::new(&r.bytes()[if k == 0 { off } else { 0 }..]);
        }
        let mut done = match t.write_vectored(&iov[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while i < replies.len() && done >= replies[i].bytes().len() - off {
            done -= replies[i].bytes().len() - off;
            i += 1;
            off = 0;
        }
        off += done;
    }
    Ok(())
}

struct Conn<T> {
    t: T,
    dev: Arc<dyn BlockDevice>,
    neg: Negotiated,
    max_request: u32,
    max_threads: usize,
    limits: Arc<Limits>,
    rx: Mutex<Rx>,
    tx: Mutex<Tx>,
    /// Threads waiting for the reader role.
    idle: AtomicUsize,
    threads: AtomicUsize,
    stopping: AtomicBool,
    error: Mutex<Option<NbdError>>,
}

/// Held by every worker thread; the connection is over when all are dropped.
type Alive = mpsc::Sender<()>;

impl<T: Transport> Conn<T> {
    fn fail(&self, e: NbdError) {
        lock(&self.error).get_or_insert(e);
    }

    /// End the connection at once: no more reads, queued and later replies are
    /// dropped (their permits too, so a reader waiting for budget wakes up).
    fn cut(&self, e: NbdError) {
        self.fail(e);
        self.stopping.store(true, Relaxed);
        self.t.abort();
        let dropped = {
            let mut tx = lock(&self.tx);
            tx.broken = true;
            // A writer that panicked left `busy` set; nobody writes any more anyway.
            tx.busy = false;
            std::mem::take(&mut tx.queue)
        };
        drop(dropped);
        lock(&self.rx).done = true;
    }

    /// Start another worker unless there are enough.
    fn spawn(self: &Arc<Self>, alive: &Alive) -> io::Result<()> {
        if self.threads.fetch_add(1, Relaxed) >= self.max_threads {
            self.threads.fetch_sub(1, Relaxed);
            return Ok(());
        }
        let (conn, alive) = (self.clone(), alive.clone());
        let r = std::thread::Builder::new()
            .name("nbd-conn".into())
            .spawn(move || conn.worker(alive));
        if r.is_err() {
            self.threads.fetch_sub(1, Relaxed);
        }
        r.map(drop)
    }

    fn worker(self: Arc<Self>, alive: Alive) {
        let served = catch_unwind(AssertUnwindSafe(|| {
            let mut batch = Vec::new();
            while let Some(req) = self.next_request(&alive) {
                let reply = self.handle(req);
                self.send(reply, &mut batch);
            }
        }));
        if served.is_err() {
            // A bug of ours (device panics are caught in `execute`). A request may be
            // half read or left unanswered, so this connection ends; others go on.
            tracing::error!("NBD connection thread panicked; closing the connection");
            self.cut(NbdError::Io(io::Error::other("connection thread panicked")));
        }
        self.threads.fetch_sub(1, Relaxed);
        // The socket and the device go before the connection is reported done.
        drop(self);
        drop(alive);
    }

    /// Take the reader role, read one request, pass the role on.
    fn next_request(self: &Arc<Self>, alive: &Alive) -> Option<Request> {
        self.idle.fetch_add(1, Relaxed);
        let mut rx = lock(&self.rx);
        self.idle.fetch_sub(1, Relaxed);
        if rx.done {
            return None;
        }
        let r = self.read_request(&mut rx);
        match r {
            Ok(Some(req)) => {
                // Someone must read on while this request runs; a slow one must
                // not hold up the rest.
                let spawn = self.idle.load(Relaxed) == 0;
                drop(rx);
                if spawn {
                    if let Err(e) = self.spawn(alive) {
                        tracing::warn!(error = %e, "cannot start an NBD worker thread");
                    }
                }
                Some(req)
            }
            Ok(None) => {
                rx.done = true;
                None
            }
            Err(e) => {
                rx.done = true;
                // Errors from the stop itself (EOF mid-request) are not the client's.
                if !self.stopping.load(Relaxed) {
                    self.fail(e);
                }
                None
            }
        }
    }

    /// `Ok(None)`: no more requests (EOF, DISC or stopping).
    fn read_request(&self, rx: &mut Rx) -> Result<Option<Request>, NbdError> {
        if self.stopping.load(Relaxed) {
            return Ok(None);
        }
        let mut hdr = [0u8; REQUEST_HEADER_LEN];
        if !rx.read_exact_or_eof(&self.t, &mut hdr)? {
            return Ok(None);
        }
        // Bad magic means we lost framing: drop the connection.
        let h = wire::parse_request_header(&hdr)?;
        let op = validate(&h, &self.neg, self.max_request);
        if op == Ok(Op::Disc) {
            return Ok(None);
        }
        // READ and WRITE payloads count against the connection's byte budget.
        let bytes = match op {
            Ok(Op::Write { len, .. } | Op::Read { len, .. }) => len as usize,
            _ => 0,
        };
        let permit = self.limits.acquire(bytes);
        // Only WRITE carries a payload; it must be consumed even when refused.
        let mut payload = Vec::new();
        match op {
            Ok(Op::Write { len, .. }) => {
                payload = pool::take(len as usize);
                rx.read_exact(&self.t, &mut payload)?;
            }
            Err(_) if h.command == CMD_WRITE => rx.skip(&self.t, u64::from(h.len))?,
            _ => {}
        }
        Ok(Some(Request {
            cookie: h.cookie,
            op,
            command: h.command,
            payload,
            permit,
        }))
    }

    fn handle(&self, req: Request) -> Reply {
        let out = match req.op {
            Ok(Op::Cache) => Out::whole(ok_reply(req.cookie)),
            Ok(op) => execute(&*self.dev, &self.neg, req.cookie, op, req.payload),
            Err((e, msg)) => {
                tracing::debug!(
                    cookie = req.cookie,
                    cmd = req.command,
                    ?e,
                    msg,
                    "request refused"
                );
                let mut v = Vec::new();
                error_reply(&mut v, &self.neg, req.cookie, e, msg, None);
                Out::whole(v)
            }
        };
        Reply {
            out,
            _permit: req.permit,
        }
    }

    /// Queue `reply`, and write the queue unless another thread is at it.
    fn send(&self, reply: Reply, batch: &mut Vec<Reply>) {
        let mut tx = lock(&self.tx);
        if tx.broken {
            return;
        }
        tx.queue.push(reply);
        if tx.busy {
            return;
        }
        tx.busy = true;
        loop {
            std::mem::swap(&mut tx.queue, batch);
            drop(tx);
            let r = write_replies(&self.t, batch);
            for reply in batch.drain(..) {
                pool::give(reply.out.buf);
            }
            tx = lock(&self.tx);
            if let Err(e) = r {
                // The client is gone or broken: stop reading too.
                tx.broken = true;
                tx.busy = false;
                let dropped = std::mem::take(&mut tx.queue);
                drop(tx);
                drop(dropped);
                // After a deliberate cut, a failed write is expected, not news.
                if !self.stopping.load(Relaxed) {
                    self.fail(e.into());
                }
                self.t.abort();
                return;
            }
            if tx.queue.is_empty() {
                tx.busy = false;
                return;
            }
        }
    }
}

/// Aborts the connection's socket if the future serving it is dropped.
struct AbortOnDrop<'a, T: Transport>(Option<&'a Conn<T>>);

impl<T: Transport> Drop for AbortOnDrop<'_, T> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.stopping.store(true, Relaxed);
            c.t.abort();
        }
    }
}

/// Serve requests on `t` until DISC, EOF, a protocol error, a socket error or
/// `shutdown` resolves; requests already read are answered first. Once `abort`
/// resolves the socket is cut instead: requests already running still finish
/// on the device (so a flush after this returns covers them), but their
/// replies are dropped. Returns only when no thread of the connection is left.
pub(crate) async fn run<T: Transport>(
    t: T,
    dev: Arc<dyn BlockDevice>,
    cfg: &ServerConfig,
    neg: Negotiated,
    shutdown: impl Future<Output = ()>,
    abort: impl Future<Output = ()>,
) -> Result<(), NbdError> {
    let conn = Arc::new(Conn {
        t,
        dev,
        neg,
        max_request: cfg.max_request,
        // One more than the requests that may be in flight, for the reader.
        max_threads: cfg.max_inflight_requests + 1,
        limits: Arc::new(Limits {
            st: Mutex::new(LimitState {
                requests: cfg.max_inflight_requests,
                bytes: cfg.max_inflight_bytes,
                waiting: false,
            }),
            cv: Condvar::new(),
        }),
        rx: Mutex::new(Rx {
            // Small headers then cost no syscall each.
            buf: vec![0u8; 64 << 10].into_boxed_slice(),
            pos: 0,
            end: 0,
            done: false,
        }),
        tx: Mutex::default(),
        idle: AtomicUsize::new(0),
        threads: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        error: Mutex::new(None),
    });
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let mut guard = AbortOnDrop(Some(&*conn));
    conn.spawn(&alive)?;
    drop(alive);
    tokio::pin!(shutdown, abort);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = all_done.recv() => break,
            _ = &mut shutdown, if !stopping => {
                stopping = true;
                conn.stopping.store(true, Relaxed);
                conn.t.stop_reading();
            }
            _ = &mut abort => {
                conn.stopping.store(true, Relaxed);
                conn.t.abort();
                // Threads still in a device call finish it; the rest see the cut socket.
                all_done.recv().await;
                break;
            }
        }
    }
    guard.0 = None;
    let e = lock(&conn.error).take();
    e.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(structured: bool, ro: bool) -> Negotiated {
        Negotiated {
            size: 1 << 20,
            transmission_flags: 0,
            read_only: ro,
            structured,
            base_allocation: structured.then_some(1),
        }
    }

    fn req(command: u16, flags: u16, offset: u64, len: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            cookie: 1,
            offset,
            len,
        }
    }

    #[test]
    fn validation_errors() {
        let n = neg(false, false);
        let max = 1 << 16;
        let v = |h| validate(&h, &n, max).map_err(|e| e.0);
        assert_eq!(v(req(99, 0, 0, 0)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_READ, CMD_FLAG_DF, 0, 1)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_READ, 1 << 9, 0, 1)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_READ, 0, (1 << 20) - 1, 2)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_READ, 0, u64::MAX, 2)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_READ, 0, 0, max + 1)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_WRITE, 0, 1 << 20, 1)), Err(NbdErrno::NoSpc));
        assert_eq!(
            v(req(CMD_WRITE_ZEROES, 0, 1 << 20, 1)),
            Err(NbdErrno::NoSpc)
        );
        assert_eq!(v(req(CMD_TRIM, 0, 1 << 20, 1)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_FLUSH, 0, 1, 0)), Err(NbdErrno::Inval));
        assert_eq!(v(req(CMD_BLOCK_STATUS, 0, 0, 1)), Err(NbdErrno::Inval));
        assert_eq!(
            v(req(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 1)),
            Err(NbdErrno::Inval)
        );
        assert!(v(req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FUA, 0, 1)).is_ok());
        let s = neg(true, false);
        assert_eq!(
            validate(&req(CMD_READ, 0, 0, max + 1), &s, max).map_err(|e| e.0),
            Err(NbdErrno::Overflow)
        );
        assert!(validate(&req(CMD_READ, CMD_FLAG_DF, 0, 1), &s, max).is_ok());
        let ro = neg(false, true);
        assert_eq!(
            validate(&req(CMD_WRITE, 0, 0, 1), &ro, max).map_err(|e| e.0),
            Err(NbdErrno::Perm)
        );
        assert_eq!(
            validate(&req(CMD_TRIM, 0, 0, 1), &ro, max).map_err(|e| e.0),
            Err(NbdErrno::Perm)
        );
    }

    #[test]
    fn block_status_clipping() {
        let e = |len, hole| Extent {
            len,
            hole,
            zero: hole,
        };
        let r = block_status_reply(
            9,
            1,
            1000,
            false,
            &[e(0, true), e(600, false), e(600, false), e(5000, true)],
        );
        // header + ctx + one merged descriptor of 1000 bytes
        assert_eq!(r.len(), 20 + 4 + 8);
        assert_eq!(&r[24..28], &1000u32.to_be_bytes());
        let r = block_status_reply(9, 1, 1000, true, &[e(100, true), e(900, false)]);
        assert_eq!(r.len(), 20 + 12);
        assert_eq!(&r[24..28], &100u32.to_be_bytes());
        assert_eq!(&r[28..32], &(STATE_HOLE | STATE_ZERO).to_be_bytes());
        let r = block_status_reply(9, 1, 1000, false, &[]);
        assert_eq!(&r[24..32], &[0, 0, 3, 232, 0, 0, 0, 0]);
    }
}
