//! Per-connection plumbing: request and byte budgets, buffered request input, and
//! replies queued for the socket.

use std::io::{self, IoSlice};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::reply::Out;
use super::request::{Op, Reject};
use crate::transport::Transport;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its state consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-connection bound on requests, and on READ/WRITE payload bytes, from
/// parsing a request until its reply has been handed to the socket.
pub(super) struct Limits {
    pub(super) st: Mutex<LimitState>,
    pub(super) cv: Condvar,
}

pub(super) struct LimitState {
    pub(super) requests: usize,
    pub(super) bytes: usize,
    /// Only the reader-role holder ever waits.
    pub(super) waiting: bool,
}

impl Limits {
    /// `bytes` must not exceed the budget (ensured by `ServerConfig::validate`).
    pub fn acquire(self: &Arc<Self>, bytes: usize) -> Permit {
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

pub(super) struct Permit {
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
pub(super) struct Reply {
    pub(super) out: Out,
    pub(super) _permit: Permit,
}

impl Reply {
    pub fn bytes(&self) -> &[u8] {
        &self.out.buf[self.out.at.clone()]
    }
}

pub(super) struct Request {
    pub(super) cookie: u64,
    pub(super) op: Result<Op, Reject>,
    pub(super) command: u16,
    pub(super) payload: Vec<u8>,
    pub(super) permit: Permit,
}

/// Buffered request input. Whoever holds it has the reader role.
pub(super) struct Rx {
    pub(super) buf: Box<[u8]>,
    pub(super) pos: usize,
    pub(super) end: usize,
    /// No more requests will be read (EOF, DISC, stop or error).
    pub(super) done: bool,
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
    pub fn read_exact_or_eof<T: Transport>(&mut self, t: &T, out: &mut [u8]) -> io::Result<bool> {
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

    pub fn read_exact<T: Transport>(&mut self, t: &T, out: &mut [u8]) -> io::Result<()> {
        if self.read_exact_or_eof(t, out)? {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }

    pub fn skip<T: Transport>(&mut self, t: &T, mut n: u64) -> io::Result<()> {
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
pub(super) struct Tx {
    pub(super) queue: Vec<Reply>,
    pub(super) busy: bool,
    pub(super) broken: bool,
}

/// Most replies per `writev`.
const MAX_IOV: usize = 64;

pub(super) fn write_replies<T: Transport>(t: &T, replies: &[Reply]) -> io::Result<()> {
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
