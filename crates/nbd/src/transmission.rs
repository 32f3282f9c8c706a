//! Transmission phase: a reader that parses and validates requests and hands
//! device work to the blocking pool, and a writer that sends whole replies
//! (possibly out of order) from a channel.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::device::{BlockDevice, Extent};
use crate::handshake::{read_exact_or_eof, Negotiated};
use crate::wire::{self, *};
use crate::{NbdError, ServerConfig};

/// Most descriptors we put in one block status chunk (spec: SHOULD NOT exceed 2^20).
const MAX_STATUS_DESCRIPTORS: usize = 8192;

/// A fully-encoded reply. The permits bound in-flight work and are released
/// only once the reply has been handed to the socket.
/// Recycled I/O buffers: a reused buffer is already initialised, so reads and write
/// payloads need neither fresh zeroed memory nor page faults.
mod pool {
    use std::sync::Mutex;

    static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    const KEEP: usize = 64;
    const KEEP_MAX_CAP: usize = 33 << 20;

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
        if free.len() < KEEP {
            free.push(b);
        }
    }
}

struct Reply {
    buf: Vec<u8>,
    _slot: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
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

/// Blocking work for one request; returns the encoded reply.
fn execute(
    dev: &dyn BlockDevice,
    n: &Negotiated,
    cookie: u64,
    op: Op,
    payload: Vec<u8>,
) -> Vec<u8> {
    let fail = |(e, msg): (NbdErrno, String), offset: Option<u64>| {
        tracing::debug!(cookie, ?op, ?e, %msg, "device request failed");
        let mut v = Vec::new();
        error_reply(&mut v, n, cookie, e, &msg, offset);
        v
    };
    match op {
        Op::Read { offset, len } => {
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
                return v;
            }
            // Read straight into the reply buffer, after room for the header.
            let mut buf = pool::take(hdr + len);
            if let Err(e) = guarded(|| dev.read_at(&mut buf[hdr..], offset)) {
                return fail(e, Some(offset));
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
            buf[..hdr].copy_from_slice(&h);
            buf
        }
        Op::Write { offset, fua, .. } => {
            let r = guarded(|| dev.write_at(&payload, offset, fua));
            pool::give(payload);
            match r {
                Ok(()) => ok_reply(cookie),
                Err(e) => fail(e, None),
            }
        }
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
    }
}

pub(crate) struct Transmission {
    pub dev: Arc<dyn BlockDevice>,
    pub cfg: Arc<ServerConfig>,
    pub neg: Negotiated,
}

impl Transmission {
    /// Serve requests until DISC, EOF, a protocol error, a socket error or
    /// `shutdown` resolves; in-flight requests are always answered first.
    pub async fn run<R, W>(
        self,
        reader: R,
        writer: W,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), NbdError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (tx, rx) = mpsc::unbounded_channel::<Reply>();
        let writer = write_loop(writer, rx);
        tokio::pin!(writer);
        let read_result = tokio::select! {
            // Buffered so small headers do not cost a syscall each; created only
            // now so no handshake bytes can be stranded in it.
            r = self.read_loop(BufReader::with_capacity(64 << 10, reader), tx, shutdown) => r,
            // The writer only finishes early on a socket error; stop reading then.
            w = &mut writer => return w,
        };
        // The reader dropped its sender; the writer drains every in-flight reply.
        let write_result = writer.await;
        read_result.and(write_result)
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        tx: mpsc::UnboundedSender<Reply>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), NbdError> {
        let slots = Arc::new(Semaphore::new(self.cfg.max_inflight_requests));
        let bytes = Arc::new(Semaphore::new(self.cfg.max_inflight_bytes));
        tokio::pin!(shutdown);
        loop {
            let mut hdr = [0u8; REQUEST_HEADER_LEN];
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(()),
                r = read_exact_or_eof(&mut reader, &mut hdr) => {
                    if !r? {
                        return Ok(());
                    }
                }
            }
            // Bad magic means we lost framing: drop the connection.
            let h = wire::parse_request_header(&hdr)?;
            let op = validate(&h, &self.neg, self.cfg.max_request);
            if op == Ok(Op::Disc) {
                return Ok(());
            }
            let slot = slots.clone().acquire_owned().await.expect("never closed");

            // Only WRITE carries a payload; it must be consumed even when refused.
            let mut payload = Vec::new();
            // READ and WRITE payloads count against the connection's byte budget.
            let byte_permit = match op {
                Ok(Op::Write { len, .. } | Op::Read { len, .. }) => Some(
                    bytes
                        .clone()
                        .acquire_many_owned(len)
                        .await
                        .expect("never closed"),
                ),
                _ => None,
            };
            match op {
                Ok(Op::Write { len, .. }) => {
                    payload = pool::take(len as usize);
                    reader.read_exact(&mut payload).await?;
                }
                Err(_) if h.command == CMD_WRITE => {
                    let mut skip = (&mut reader).take(u64::from(h.len));
                    let n = tokio::io::copy(&mut skip, &mut tokio::io::sink()).await?;
                    if n != u64::from(h.len) {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                }
                _ => {}
            }

            let op = match op {
                Ok(Op::Cache) => {
                    send(&tx, ok_reply(h.cookie), slot, byte_permit);
                    continue;
                }
                Ok(op) => op,
                Err((e, msg)) => {
                    tracing::debug!(
                        cookie = h.cookie,
                        cmd = h.command,
                        ?e,
                        msg,
                        "request refused"
                    );
                    let mut v = Vec::new();
                    error_reply(&mut v, &self.neg, h.cookie, e, msg, None);
                    send(&tx, v, slot, byte_permit);
                    continue;
                }
            };
            let dev = self.dev.clone();
            let neg = self.neg;
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || {
                let buf = execute(&*dev, &neg, h.cookie, op, payload);
                send(&tx, buf, slot, byte_permit);
            });
        }
    }
}

fn send(
    tx: &mpsc::UnboundedSender<Reply>,
    buf: Vec<u8>,
    slot: OwnedSemaphorePermit,
    bytes: Option<OwnedSemaphorePermit>,
) {
    // If the writer is gone the connection is dead; dropping the reply is fine.
    let _ = tx.send(Reply {
        buf,
        _slot: slot,
        _bytes: bytes,
    });
}

async fn write_loop<W: AsyncWrite + Unpin>(
    writer: W,
    mut rx: mpsc::UnboundedReceiver<Reply>,
) -> Result<(), NbdError> {
    let mut w = BufWriter::with_capacity(64 << 10, writer);
    while let Some(reply) = rx.recv().await {
        w.write_all(&reply.buf).await?;
        pool::give(reply.buf);
        // Batch whatever is already queued before paying for a flush.
        while let Ok(reply) = rx.try_recv() {
            w.write_all(&reply.buf).await?;
            pool::give(reply.buf);
        }
        w.flush().await?;
    }
    w.flush().await?;
    let _ = w.shutdown().await;
    Ok(())
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
