//! A TLS connection over a non-blocking socket, used first as an async stream (the rest
//! of the handshake, on the runtime) and then as a blocking [`Transport`] (transmission,
//! from the connection's own threads).
//!
//! One `SslStream` is shared by readers and writers under a mutex that is never held
//! while waiting: an operation that would block drops the lock and waits in `poll(2)`
//! (or on the runtime), then tries again.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use openssl::ssl::{self, ErrorCode, Ssl, SslRef, SslStream};
use rustix::event::{PollFd, PollFlags};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::transport::Transport;

/// A connected socket in non-blocking mode: registered with the runtime during the
/// handshake, a plain std socket in transmission.
pub(crate) enum Raw {
    TokioTcp(Arc<tokio::net::TcpStream>),
    TokioUnix(Arc<tokio::net::UnixStream>),
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
    /// Between the two.
    Gone,
}

impl Raw {
    pub fn from_tokio_tcp(s: tokio::net::TcpStream) -> io::Result<Self> {
        Ok(Raw::TokioTcp(Arc::new(s)))
    }

    pub fn from_tokio_unix(s: tokio::net::UnixStream) -> io::Result<Self> {
        Ok(Raw::TokioUnix(Arc::new(s)))
    }

    /// The same socket for the runtime's readiness (shares the registration).
    fn share(&self) -> io::Result<Raw> {
        match self {
            Raw::TokioTcp(s) => Ok(Raw::TokioTcp(s.clone())),
            Raw::TokioUnix(s) => Ok(Raw::TokioUnix(s.clone())),
            _ => Err(io::Error::other(
                "TLS started on a socket not on the runtime",
            )),
        }
    }

    fn poll_ready(&self, cx: &mut Context<'_>, write: bool) -> Poll<io::Result<()>> {
        match (self, write) {
            (Raw::TokioTcp(s), false) => s.poll_read_ready(cx),
            (Raw::TokioTcp(s), true) => s.poll_write_ready(cx),
            (Raw::TokioUnix(s), false) => s.poll_read_ready(cx),
            (Raw::TokioUnix(s), true) => s.poll_write_ready(cx),
            _ => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    /// Off the runtime, for blocking threads (still non-blocking: they wait in poll).
    /// `self` must be the last holder of the socket.
    fn into_std(self) -> io::Result<Raw> {
        let last = || io::Error::other("TLS socket still shared");
        match self {
            Raw::TokioTcp(s) => Ok(Raw::Tcp(Arc::into_inner(s).ok_or_else(last)?.into_std()?)),
            Raw::TokioUnix(s) => Ok(Raw::Unix(Arc::into_inner(s).ok_or_else(last)?.into_std()?)),
            other => Ok(other),
        }
    }

    fn shutdown(&self, how: std::net::Shutdown) {
        // Fails only if the peer is already gone.
        let _ = match self {
            Raw::Tcp(s) => s.shutdown(how),
            Raw::Unix(s) => s.shutdown(how),
            _ => Ok(()),
        };
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Raw::TokioTcp(s) => Some(s.as_fd()),
            Raw::TokioUnix(s) => Some(s.as_fd()),
            Raw::Tcp(s) => Some(s.as_fd()),
            Raw::Unix(s) => Some(s.as_fd()),
            Raw::Gone => None,
        }
    }
}

impl Read for Raw {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Raw::TokioTcp(s) => s.try_read(buf),
            Raw::TokioUnix(s) => s.try_read(buf),
            Raw::Tcp(s) => (&*s).read(buf),
            Raw::Unix(s) => (&*s).read(buf),
            Raw::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Write for Raw {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Raw::TokioTcp(s) => s.try_write(buf),
            Raw::TokioUnix(s) => s.try_write(buf),
            Raw::Tcp(s) => (&*s).write(buf),
            Raw::Unix(s) => (&*s).write(buf),
            Raw::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What OpenSSL reads from and writes to: the socket, and in transmission a buffer that
/// gathers the records of a whole reply, sent with one large write instead of one
/// system call per 16 KiB record.
pub(crate) struct Io {
    raw: Raw,
    /// Some: writes are gathered here (never blocking) until [`TlsSock::drain`].
    wbuf: Option<Vec<u8>>,
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.raw.read(buf)
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.wbuf {
            Some(w) => {
                w.extend_from_slice(buf);
                Ok(buf.len())
            }
            None => self.raw.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn lock(m: &Mutex<SslStream<Io>>) -> MutexGuard<'_, SslStream<Io>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a failed TLS operation means for the caller.
enum Step {
    WantRead,
    WantWrite,
    Eof,
    Fail(io::Error),
}

fn step(e: ssl::Error) -> Step {
    match e.code() {
        ErrorCode::WANT_READ => Step::WantRead,
        ErrorCode::WANT_WRITE => Step::WantWrite,
        ErrorCode::ZERO_RETURN => Step::Eof,
        ErrorCode::SYSCALL if e.io_error().is_none() => Step::Eof,
        _ => Step::Fail(match e.into_io_error() {
            Ok(io) => io,
            Err(e) => io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")),
        }),
    }
}

/// The TLS stream during the handshake, driven by the runtime.
pub(crate) struct AsyncTls {
    ssl: Mutex<SslStream<Io>>,
    /// The socket inside `ssl`, shared for its readiness.
    sock: Raw,
}

impl AsyncTls {
    /// Runs the TLS handshake as the server.
    pub async fn accept(ssl: Ssl, raw: Raw) -> io::Result<Self> {
        let sock = raw.share()?;
        let s = SslStream::new(ssl, Io { raw, wbuf: None }).map_err(io::Error::other)?;
        let this = AsyncTls {
            ssl: Mutex::new(s),
            sock,
        };
        std::future::poll_fn(|cx| this.poll_op(cx, |s| s.accept())).await?;
        Ok(this)
    }

    pub fn with_ssl<R>(&self, f: impl FnOnce(&SslRef) -> R) -> R {
        f(lock(&self.ssl).ssl())
    }

    /// Tries `op` until it does not need to wait; waits on the runtime for the socket.
    /// A try that would block has cleared the socket's readiness (tokio's `try_read` /
    /// `try_write` do on EWOULDBLOCK), so a wake-up after it is never lost.
    fn poll_op<R>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&mut SslStream<Io>) -> Result<R, ssl::Error>,
    ) -> Poll<io::Result<R>> {
        loop {
            let r = op(&mut lock(&self.ssl));
            match r.map_err(step) {
                Ok(v) => return Poll::Ready(Ok(v)),
                Err(Step::WantRead) => ready!(self.sock.poll_ready(cx, false))?,
                Err(Step::WantWrite) => ready!(self.sock.poll_ready(cx, true))?,
                Err(Step::Eof) => {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                Err(Step::Fail(e)) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// The same connection for blocking threads.
    pub fn into_blocking(self) -> io::Result<TlsSock> {
        let AsyncTls { ssl, sock } = self;
        let mut guard = lock(&ssl);
        let inner = std::mem::replace(&mut guard.get_mut().raw, Raw::Gone);
        drop(sock);
        let std_sock = inner.into_std()?;
        let raw = match &std_sock {
            Raw::Tcp(s) => Raw::Tcp(s.try_clone()?),
            Raw::Unix(s) => Raw::Unix(s.try_clone()?),
            _ => return Err(io::ErrorKind::NotConnected.into()),
        };
        *guard.get_mut() = Io {
            raw: std_sock,
            wbuf: Some(Vec::with_capacity(FLUSH_AT + (64 << 10))),
        };
        drop(guard);
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(TlsSock {
            ssl,
            raw,
            state: AtomicU8::new(RUNNING),
            wake,
        })
    }
}

impl AsyncRead for AsyncTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = self.poll_op(cx, |s| match s.ssl_read(buf.initialize_unfilled()) {
            Err(e) if matches!(e.code(), ErrorCode::ZERO_RETURN) => Ok(0),
            Err(e) if e.code() == ErrorCode::SYSCALL && e.io_error().is_none() => Ok(0),
            r => r,
        });
        let n = ready!(r)?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for AsyncTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.poll_op(cx, |s| s.ssl_write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Records go to the socket as they are made.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Best effort close_notify; the socket closes when dropped.
        let _ = lock(&self.ssl).shutdown();
        Poll::Ready(Ok(()))
    }
}

const RUNNING: u8 = 0;
const STOP_READING: u8 = 1;
const ABORTED: u8 = 2;

/// The TLS connection in transmission: blocking calls made of non-blocking tries and
/// `poll(2)`.
pub(crate) struct TlsSock {
    ssl: Mutex<SslStream<Io>>,
    raw: Raw,
    state: AtomicU8,
    /// Readable once reading is to stop: wakes a reader waiting in poll.
    wake: OwnedFd,
}

impl TlsSock {
    /// Waits until the socket has `events` (or an error or hang-up); readers also wake at
    /// a stop.
    fn wait(&self, events: PollFlags, reader: bool) -> io::Result<()> {
        let Some(fd) = self.raw.fd() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let mut fds = [
            PollFd::from_borrowed_fd(fd, events),
            PollFd::new(&self.wake, PollFlags::IN),
        ];
        let n = if reader { 2 } else { 1 };
        loop {
            match rustix::event::poll(&mut fds[..n], None) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn stopped(&self) -> bool {
        self.state.load(Ordering::Acquire) >= STOP_READING
    }

    /// Encrypts all of `buf` into the write buffer, sending it whenever it is large.
    fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.state.load(Ordering::Acquire) >= ABORTED {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let (r, pending) = {
                let mut s = lock(&self.ssl);
                // At most FLUSH_AT per call, so the buffer stays near that size.
                let r = s.ssl_write(&buf[..buf.len().min(FLUSH_AT)]);
                (r, s.get_ref().wbuf.as_ref().map_or(0, Vec::len))
            };
            match r.map_err(step) {
                Ok(n) => buf = &buf[n..],
                // Not with the buffer in place, but harmless.
                Err(Step::WantWrite) => self.wait(PollFlags::OUT, false)?,
                Err(Step::WantRead) => self.wait(PollFlags::IN, false)?,
                Err(Step::Eof) => return Err(io::ErrorKind::BrokenPipe.into()),
                Err(Step::Fail(e)) => return Err(e),
            }
            if pending >= FLUSH_AT {
                self.drain()?;
            }
        }
        Ok(())
    }

    /// Sends what the write buffer holds. Only writers call it, one at a time (the
    /// caller serialises writes), so the buffer taken out is sent whole before any later
    /// one.
    fn drain(&self) -> io::Result<()> {
        let mut data = match lock(&self.ssl).get_mut().wbuf.as_mut() {
            Some(w) if !w.is_empty() => std::mem::take(w),
            _ => return Ok(()),
        };
        let mut off = 0;
        let r = loop {
            if off == data.len() {
                break Ok(());
            }
            if self.state.load(Ordering::Acquire) >= ABORTED {
                break Err(io::ErrorKind::BrokenPipe.into());
            }
            let w = match &self.raw {
                Raw::Tcp(s) => (&*s).write(&data[off..]),
                Raw::Unix(s) => (&*s).write(&data[off..]),
                _ => Err(io::ErrorKind::NotConnected.into()),
            };
            match w {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.wait(PollFlags::OUT, false) {
                        break Err(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        // Hand the allocation back unless records were gathered meanwhile (by a reader).
        data.clear();
        if let Some(w) = lock(&self.ssl).get_mut().wbuf.as_mut() {
            if w.is_empty() {
                *w = data;
            }
        }
        r
    }

    fn signal(&self, state: u8) {
        self.state.fetch_max(state, Ordering::AcqRel);
        // The counter only needs to be nonzero; a full counter is just as readable.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }
}

/// Small replies are gathered into one TLS record rather than one record each.
const GATHER: usize = 16 << 10;
/// Encrypted bytes gathered before they are sent.
const FLUSH_AT: usize = 1 << 20;

impl Transport for TlsSock {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = lock(&self.ssl).ssl_read(buf);
            match r.map_err(step) {
                Ok(n) => return Ok(n),
                Err(Step::WantRead) => {
                    // Data already received is handed out first (the try just made).
                    if self.stopped() {
                        return Ok(0);
                    }
                    self.wait(PollFlags::IN, true)?;
                }
                Err(Step::WantWrite) if self.stopped() => return Ok(0),
                Err(Step::WantWrite) => self.wait(PollFlags::OUT, true)?,
                Err(Step::Eof) => return Ok(0),
                Err(Step::Fail(_)) if self.stopped() => return Ok(0),
                Err(Step::Fail(e)) => return Err(e),
            }
        }
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut done = 0;
        let mut small = Vec::new();
        for b in bufs {
            if b.len() < GATHER && small.len() + b.len() <= GATHER {
                small.extend_from_slice(b);
                continue;
            }
            if !small.is_empty() {
                self.write_all(&small)?;
                done += small.len();
                small.clear();
            }
            self.write_all(b)?;
            done += b.len();
        }
        if !small.is_empty() {
            self.write_all(&small)?;
            done += small.len();
        }
        self.drain()?;
        Ok(done)
    }

    fn stop_reading(&self) {
        self.signal(STOP_READING);
    }

    fn abort(&self) {
        self.signal(ABORTED);
        self.raw.shutdown(std::net::Shutdown::Both);
    }
}
