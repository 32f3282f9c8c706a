//! Replies: running a request on the device and encoding its answer.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::pool;
use super::request::Op;
use crate::device::{BlockDevice, Extent};
use crate::handshake::Negotiated;
use crate::wire::{self, *};

/// Most descriptors we put in one block status chunk (spec: SHOULD NOT exceed 2^20).
const MAX_STATUS_DESCRIPTORS: usize = 8192;

/// Encode an error reply in the negotiated style.
pub(super) fn error_reply(
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

pub(super) fn ok_reply(cookie: u64) -> Vec<u8> {
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
pub(super) struct Out {
    pub(super) buf: Vec<u8>,
    pub(super) at: Range<usize>,
}

impl Out {
    pub fn whole(buf: Vec<u8>) -> Out {
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
pub(super) fn execute(
    dev: &dyn BlockDevice,
    n: &Negotiated,
    cookie: u64,
    op: Op,
    payload: Vec<u8>,
) -> Out {
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

#[cfg(test)]
mod tests {
    use super::*;

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
