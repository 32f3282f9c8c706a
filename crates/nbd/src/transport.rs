//! Blocking byte streams for the transmission phase: real sockets, or any
//! async stream bridged onto the runtime.

use std::io::{self, IoSlice, Read, Write};
use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::runtime::Handle;
use tokio::sync::watch;

/// A connected stream used from several threads at once: reads are
/// serialised by the caller, and so are writes.
pub(crate) trait Transport: Send + Sync + 'static {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Graceful stop: once no received data is left, reads return EOF
    /// (blocked ones too). Writes still work.
    fn stop_reading(&self);
    /// Forced stop: blocked and later reads return EOF, writes fail.
    fn abort(&self);
}

/// A socket in blocking mode.
pub(crate) enum Sock {
    Tcp(std::net::TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

impl Sock {
    pub fn from_tokio_tcp(s: tokio::net::TcpStream) -> io::Result<Self> {
        let s = s.into_std()?;
        s.set_nonblocking(false)?;
        Ok(Sock::Tcp(s))
    }

    #[cfg(unix)]
    pub fn from_tokio_unix(s: tokio::net::UnixStream) -> io::Result<Self> {
        let s = s.into_std()?;
        s.set_nonblocking(false)?;
        #[cfg(target_os = "linux")]
        set_send_buffer(&s, UNIX_SNDBUF);
        Ok(Sock::Unix(s))
    }

    fn shutdown(&self, how: std::net::Shutdown) {
        // Fails only if the peer is already gone, which is the goal anyway.
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(how),
            #[cfg(unix)]
            Sock::Unix(s) => s.shutdown(how),
        };
    }
}

impl Transport for Sock {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).read(buf),
            #[cfg(unix)]
            Sock::Unix(s) => (&*s).read(buf),
        }
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).write_vectored(bufs),
            #[cfg(unix)]
            Sock::Unix(s) => (&*s).write_vectored(bufs),
        }
    }

    fn stop_reading(&self) {
        // Linux wakes blocked readers and still hands out queued data first.
        self.shutdown(std::net::Shutdown::Read);
    }

    fn abort(&self) {
        self.shutdown(std::net::Shutdown::Both);
    }
}

/// Send buffer asked for on Unix sockets (the kernel doubles it, capped by
/// `net.core.wmem_max`). The default (208 KiB) splits every 1 MiB READ reply
/// into several sleeps and wake-ups on both sides; this made sequential 1 MiB
/// reads about 20% faster. TCP tunes its own buffers.
#[cfg(target_os = "linux")]
const UNIX_SNDBUF: usize = 1 << 20;

#[cfg(target_os = "linux")]
fn set_send_buffer(s: &std::os::unix::net::UnixStream, bytes: usize) {
    if let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(s, bytes) {
        // Only a performance hint.
        tracing::debug!(error = %e, "SO_SNDBUF not set");
    }
}

const RUNNING: u8 = 0;
const STOP_READING: u8 = 1;
const ABORTED: u8 = 2;

/// Any async stream, driven from blocking threads with `Handle::block_on`
/// (in-memory pipes in tests, or streams of unknown type).
pub(crate) struct Bridge<S> {
    rd: Mutex<ReadHalf<S>>,
    wr: Mutex<WriteHalf<S>>,
    rt: Handle,
    state: watch::Sender<u8>,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Bridge<S> {
    /// Must be called within the runtime that drives `s`.
    pub fn new(s: S) -> Self {
        let (rd, wr) = tokio::io::split(s);
        Bridge {
            rd: Mutex::new(rd),
            wr: Mutex::new(wr),
            rt: Handle::current(),
            state: watch::channel(RUNNING).0,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Transport for Bridge<S> {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rd = self.rd.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self.state.subscribe();
        self.rt.block_on(async {
            tokio::select! {
                // Received data first, like a socket after SHUT_RD.
                biased;
                r = rd.read(buf) => r,
                _ = st.wait_for(|&s| s >= STOP_READING) => Ok(0),
            }
        })
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut wr = self.wr.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self.state.subscribe();
        let write = async {
            let n = wr.write_vectored(bufs).await?;
            // Async streams may buffer; a reply must reach the client.
            wr.flush().await?;
            Ok(n)
        };
        self.rt.block_on(async {
            tokio::select! {
                biased;
                _ = st.wait_for(|&s| s >= ABORTED) => Err(io::ErrorKind::BrokenPipe.into()),
                r = write => r,
            }
        })
    }

    fn stop_reading(&self) {
        self.state.send_if_modified(|s| {
            let changed = *s < STOP_READING;
            *s = (*s).max(STOP_READING);
            changed
        });
    }

    fn abort(&self) {
        self.state.send_replace(ABORTED);
    }
}
