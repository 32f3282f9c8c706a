//! A small NBD test client written from the spec, plus test devices.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use damocles_nbd::wire::*;
use damocles_nbd::{serve_connection, BlockDevice, Extent, MemDevice, NbdError, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub const MIB: u64 = 1 << 20;

/// Start `serve_connection` on an in-memory pipe.
pub fn start(
    dev: Arc<dyn BlockDevice>,
    cfg: ServerConfig,
) -> (Client, JoinHandle<Result<(), NbdError>>) {
    start_on(Pipe::Memory, dev, cfg)
}

/// What a test connection runs over. The server serves real sockets with
/// blocking threads and other streams through the runtime: tests cover both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    /// A connected Unix socket pair.
    Socket,
    /// An in-memory `tokio::io::duplex` pipe.
    Memory,
}

/// Start `serve_connection` on a fresh `pipe`.
pub fn start_on(
    pipe: Pipe,
    dev: Arc<dyn BlockDevice>,
    cfg: ServerConfig,
) -> (Client, JoinHandle<Result<(), NbdError>>) {
    let cfg = Arc::new(cfg);
    match pipe {
        Pipe::Memory => {
            let (a, b) = tokio::io::duplex(8 << 20);
            let h = tokio::spawn(serve_connection(b, dev, cfg));
            (Client::new(Box::new(a)), h)
        }
        Pipe::Socket => {
            let (a, b) = tokio::net::UnixStream::pair().unwrap();
            let h = tokio::spawn(serve_connection(b, dev, cfg));
            (Client::new(Box::new(a)), h)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptReply {
    pub opt: u32,
    pub rep: u32,
    pub data: Vec<u8>,
}

/// One complete reply to a request.
#[derive(Debug, Default, Clone)]
pub struct Response {
    pub cookie: u64,
    pub error: u32,
    pub data: Vec<u8>,
    pub structured: bool,
    pub chunk_types: Vec<u16>,
    pub message: String,
    pub error_offset: Option<u64>,
    /// (context id, descriptors (len, flags))
    pub status: Vec<(u32, Vec<(u32, u32)>)>,
}

pub struct Client {
    pub s: Box<dyn Io>,
    pub structured: bool,
    pub size: u64,
    pub flags: u16,
    next_cookie: u64,
    pending: HashMap<u64, (u16, u64, u32)>,
    partial: HashMap<u64, Response>,
}

impl Client {
    pub fn new(s: Box<dyn Io>) -> Self {
        Client {
            s,
            structured: false,
            size: 0,
            flags: 0,
            next_cookie: 1,
            pending: HashMap::new(),
            partial: HashMap::new(),
        }
    }

    /// Read the greeting and return the handshake flags.
    pub async fn greeting(&mut self) -> u16 {
        let mut b = [0u8; 18];
        self.s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b[0..8], b"NBDMAGIC");
        assert_eq!(&b[8..16], b"IHAVEOPT");
        u16::from_be_bytes([b[16], b[17]])
    }

    pub async fn client_flags(&mut self, f: u32) {
        self.s.write_all(&f.to_be_bytes()).await.unwrap();
    }

    pub async fn send_opt(&mut self, opt: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).await.unwrap();
    }

    pub async fn recv_opt(&mut self) -> io::Result<OptReply> {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).await?;
        assert_eq!(
            u64::from_be_bytes(h[0..8].try_into().unwrap()),
            OPTION_REPLY_MAGIC
        );
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data).await?;
        Ok(OptReply {
            opt: u32::from_be_bytes(h[8..12].try_into().unwrap()),
            rep: u32::from_be_bytes(h[12..16].try_into().unwrap()),
            data,
        })
    }

    /// Send an option and collect replies up to the final ACK or error.
    pub async fn opt(&mut self, opt: u32, data: &[u8]) -> Vec<OptReply> {
        self.send_opt(opt, data).await;
        let mut v = Vec::new();
        loop {
            let r = self.recv_opt().await.unwrap();
            assert_eq!(r.opt, opt);
            let last = r.rep == REP_ACK || r.rep & REP_ERR_BIT != 0;
            v.push(r);
            if last {
                return v;
            }
        }
    }

    /// Full fixed-newstyle handshake ending in GO on `name`.
    pub async fn negotiate(&mut self, name: &str, structured: bool, meta: bool) -> Vec<OptReply> {
        assert_eq!(self.greeting().await, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        self.client_flags(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
            .await;
        if structured {
            let r = self.opt(OPT_STRUCTURED_REPLY, &[]).await;
            assert_eq!(r[0].rep, REP_ACK);
            self.structured = true;
        }
        if meta {
            let r = self
                .opt(
                    OPT_SET_META_CONTEXT,
                    &meta_request(name, &["base:allocation"]),
                )
                .await;
            assert_eq!(r.len(), 2, "{r:?}");
            assert_eq!(r[0].rep, REP_META_CONTEXT);
        }
        let r = self
            .opt(OPT_GO, &export_request(name, &[INFO_BLOCK_SIZE]))
            .await;
        assert_eq!(r.last().unwrap().rep, REP_ACK, "{r:?}");
        for i in &r {
            if i.rep == REP_INFO && i.data[0..2] == INFO_EXPORT.to_be_bytes() {
                self.size = u64::from_be_bytes(i.data[2..10].try_into().unwrap());
                self.flags = u16::from_be_bytes(i.data[10..12].try_into().unwrap());
            }
        }
        r
    }

    pub fn cookie(&mut self) -> u64 {
        self.next_cookie += 1;
        self.next_cookie
    }

    pub async fn send_req(
        &mut self,
        cmd: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let h = RequestHeader {
            flags,
            command: cmd,
            cookie,
            offset,
            len,
        };
        let mut b = encode_request_header(&h).to_vec();
        b.extend_from_slice(payload);
        self.pending.insert(cookie, (cmd, offset, len));
        self.s.write_all(&b).await.unwrap();
    }

    /// Read messages until some request's reply is complete.
    pub async fn recv(&mut self) -> io::Result<Response> {
        loop {
            let mut m = [0u8; 4];
            self.s.read_exact(&mut m).await?;
            match u32::from_be_bytes(m) {
                SIMPLE_REPLY_MAGIC => {
                    let mut h = [0u8; 12];
                    self.s.read_exact(&mut h).await?;
                    let error = u32::from_be_bytes(h[0..4].try_into().unwrap());
                    let cookie = u64::from_be_bytes(h[4..12].try_into().unwrap());
                    let (cmd, _, len) = self
                        .pending
                        .remove(&cookie)
                        .expect("reply to unknown cookie");
                    let mut data = Vec::new();
                    if cmd == CMD_READ && error == 0 {
                        data = vec![0u8; len as usize];
                        self.s.read_exact(&mut data).await?;
                    }
                    return Ok(Response {
                        cookie,
                        error,
                        data,
                        ..Default::default()
                    });
                }
                STRUCTURED_REPLY_MAGIC => {
                    assert!(self.structured, "structured reply not negotiated");
                    let mut h = [0u8; 16];
                    self.s.read_exact(&mut h).await?;
                    let flags = u16::from_be_bytes(h[0..2].try_into().unwrap());
                    let ty = u16::from_be_bytes(h[2..4].try_into().unwrap());
                    let cookie = u64::from_be_bytes(h[4..12].try_into().unwrap());
                    let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
                    let mut p = vec![0u8; len as usize];
                    self.s.read_exact(&mut p).await?;
                    let (cmd, off, rlen) =
                        *self.pending.get(&cookie).expect("chunk for unknown cookie");
                    let r = self.partial.entry(cookie).or_insert_with(|| Response {
                        cookie,
                        structured: true,
                        data: if cmd == CMD_READ {
                            vec![0u8; rlen as usize]
                        } else {
                            Vec::new()
                        },
                        ..Default::default()
                    });
                    r.chunk_types.push(ty);
                    match ty {
                        REPLY_TYPE_NONE => assert_eq!(len, 0),
                        REPLY_TYPE_OFFSET_DATA => {
                            let o = u64::from_be_bytes(p[0..8].try_into().unwrap());
                            assert!(
                                o >= off && o + (len as u64 - 8) <= off + rlen as u64,
                                "data outside request"
                            );
                            let s = (o - off) as usize;
                            r.data[s..s + p.len() - 8].copy_from_slice(&p[8..]);
                        }
                        REPLY_TYPE_OFFSET_HOLE => {
                            assert_eq!(len, 12);
                        }
                        REPLY_TYPE_BLOCK_STATUS => {
                            assert!(len >= 12 && (len - 4) % 8 == 0);
                            let ctx = u32::from_be_bytes(p[0..4].try_into().unwrap());
                            let d = p[4..]
                                .chunks(8)
                                .map(|c| {
                                    (
                                        u32::from_be_bytes(c[0..4].try_into().unwrap()),
                                        u32::from_be_bytes(c[4..8].try_into().unwrap()),
                                    )
                                })
                                .collect();
                            r.status.push((ctx, d));
                        }
                        REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
                            r.error = u32::from_be_bytes(p[0..4].try_into().unwrap());
                            assert_ne!(r.error, 0);
                            let ml = u16::from_be_bytes(p[4..6].try_into().unwrap()) as usize;
                            r.message = String::from_utf8(p[6..6 + ml].to_vec()).unwrap();
                            if ty == REPLY_TYPE_ERROR_OFFSET {
                                assert_eq!(p.len(), 6 + ml + 8);
                                r.error_offset =
                                    Some(u64::from_be_bytes(p[6 + ml..].try_into().unwrap()));
                            } else {
                                assert_eq!(p.len(), 6 + ml);
                            }
                        }
                        t => panic!("unexpected chunk type {t}"),
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        self.pending.remove(&cookie);
                        return Ok(self.partial.remove(&cookie).unwrap());
                    }
                }
                m => panic!("bad reply magic {m:#x}"),
            }
        }
    }

    /// Send one request and wait for its reply (no other requests in flight).
    pub async fn call(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Response {
        let c = self.cookie();
        self.send_req(cmd, flags, c, offset, len, payload).await;
        let r = self.recv().await.unwrap();
        assert_eq!(r.cookie, c);
        r
    }

    pub async fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        self.call(CMD_WRITE, 0, offset, data.len() as u32, data)
            .await
            .error
    }

    pub async fn read(&mut self, offset: u64, len: u32) -> Response {
        self.call(CMD_READ, 0, offset, len, &[]).await
    }

    pub async fn disc(&mut self) {
        self.send_req(CMD_DISC, 0, 0, 0, 0, &[]).await;
        self.pending.remove(&0);
    }

    /// True once the server has closed its side.
    pub async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

pub fn export_request(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

pub fn meta_request(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Wraps a device: optional delay on reads/writes at a chosen offset, call
/// and concurrency counters, and a "durable" snapshot updated on flush so
/// tests can observe what flush covered.
pub struct TestDevice {
    pub inner: MemDevice,
    pub slow_offset: Option<u64>,
    pub delay: Duration,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub flushes: AtomicUsize,
    /// Writes completed but not yet flushed, and those made durable.
    pub dirty: Mutex<Vec<(u64, Vec<u8>)>>,
    pub durable: Mutex<Vec<(u64, Vec<u8>)>>,
    pub fail: Mutex<Option<io::ErrorKind>>,
    pub panic_on_read: bool,
}

impl TestDevice {
    pub fn new(size: u64) -> Self {
        TestDevice {
            inner: MemDevice::new(size),
            slow_offset: None,
            delay: Duration::ZERO,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            flushes: AtomicUsize::new(0),
            dirty: Mutex::new(Vec::new()),
            durable: Mutex::new(Vec::new()),
            fail: Mutex::new(None),
            panic_on_read: false,
        }
    }

    fn enter(&self, offset: u64) -> io::Result<()> {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
        if self.slow_offset.is_none_or(|o| o == offset) && !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        match *self.fail.lock().unwrap() {
            Some(k) => Err(io::Error::from(k)),
            None => Ok(()),
        }
    }
}

impl BlockDevice for TestDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.panic_on_read {
            panic!("device bug");
        }
        self.enter(offset)?;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.enter(offset)?;
        self.inner.write_at(buf, offset, fua)?;
        if fua {
            self.durable.lock().unwrap().push((offset, buf.to_vec()));
        } else {
            self.dirty.lock().unwrap().push((offset, buf.to_vec()));
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        let mut d = self.dirty.lock().unwrap();
        self.durable.lock().unwrap().append(&mut d);
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.trim(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, fua: bool) -> io::Result<()> {
        self.enter(offset)?;
        self.inner.write_zeroes(offset, len, may_trim, fua)
    }
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.inner.block_status(offset, len)
    }
}
