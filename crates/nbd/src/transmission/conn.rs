//! One connection: worker threads taking turns at reading, running requests and
//! writing their replies.

use std::future::Future;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::mpsc;

use super::io::{lock, write_replies, LimitState, Limits, Reply, Request, Rx, Tx};
use super::pool;
use super::reply::{error_reply, execute, ok_reply, Out};
use super::request::{validate, Op};
use crate::device::BlockDevice;
use crate::handshake::Negotiated;
use crate::stats::{ExportStats, RequestKind};
use crate::transport::Transport;
use crate::wire::{self, *};
use crate::{NbdError, ServerConfig};

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
    stats: Option<Arc<ExportStats>>,
}

/// How a request is counted: its kind and payload bytes.
fn counted(op: &Result<Op, super::request::Reject>) -> (RequestKind, u64) {
    match op {
        Ok(Op::Read { len, .. }) => (RequestKind::Read, u64::from(*len)),
        Ok(Op::Write { len, .. }) => (RequestKind::Write, u64::from(*len)),
        _ => (RequestKind::Other, 0),
    }
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
        let start = self
            .stats
            .as_ref()
            .map(|_| (std::time::Instant::now(), counted(&req.op)));
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
        if let (Some(s), Some((t, (kind, bytes)))) = (&self.stats, start) {
            s.request(kind, bytes, t.elapsed());
        }
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
    stats: Option<Arc<ExportStats>>,
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
        stats,
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
