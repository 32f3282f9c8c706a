//! Transmission phase: commands, replies and errors.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use damocles_nbd::wire::*;
use damocles_nbd::{BlockDevice, MemDevice, ServerConfig};
use tokio::io::AsyncWriteExt;

const EINVAL: u32 = 22;
const EPERM: u32 = 1;
const EIO: u32 = 5;
const ENOSPC: u32 = 28;
const EOVERFLOW: u32 = 75;

/// Runs each test over a real socket pair (the blocking socket transport, as
/// in production) and over an in-memory pipe (the transport bridged through
/// the runtime).
macro_rules! both_pipes {
    ($flavor:meta: $($name:ident),* $(,)?) => {$(
        mod $name {
            #[$flavor]
            async fn socket() {
                super::$name(super::Pipe::Socket).await
            }
            #[$flavor]
            async fn memory() {
                super::$name(super::Pipe::Memory).await
            }
        }
    )*};
}

both_pipes!(tokio::test: simple_replies_all_commands, simple_reply_errors_keep_connection_alive, structured_replies, block_status, block_status_needs_meta_context, read_only_export, device_errors_are_mapped, panicking_device_yields_eio, replies_out_of_order, bounded_in_flight_requests, bad_magic_drops_only_that_connection, disc_answers_in_flight_requests_first, multi_conn_flush_covers_other_connections, each_connection_is_served_by_its_own_handle, oversized_write_then_hang_up, truncated_payload_ends_only_that_connection);
both_pipes!(tokio::test(flavor = "multi_thread", worker_threads = 2): many_connections, stuck_client_stalls_only_itself);

async fn connect(p: Pipe, dev: Arc<dyn BlockDevice>, structured: bool, meta: bool) -> Client {
    let (mut c, _h) = start_on(p, dev, ServerConfig::new("d"));
    c.negotiate("d", structured, meta).await;
    c
}

async fn simple_replies_all_commands(p: Pipe) {
    let dev = Arc::new(MemDevice::new(MIB));
    let mut c = connect(p, dev.clone(), false, false).await;
    assert_eq!(c.size, MIB);
    let data = pattern(1, 10_000);
    assert_eq!(c.write(1000, &data).await, 0);
    let r = c.read(1000, 10_000).await;
    assert_eq!((r.error, r.structured), (0, false));
    assert_eq!(r.data, data);
    assert_eq!(
        c.call(CMD_WRITE, CMD_FLAG_FUA, 0, 4, b"abcd").await.error,
        0
    );
    assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]).await.error, 0);
    assert_eq!(c.call(CMD_CACHE, 0, 0, 4096, &[]).await.error, 0);
    // Zeroing with and without NO_HOLE, and with FUA.
    assert_eq!(c.call(CMD_WRITE_ZEROES, 0, 4096, 4096, &[]).await.error, 0);
    assert_eq!(
        c.call(
            CMD_WRITE_ZEROES,
            CMD_FLAG_NO_HOLE | CMD_FLAG_FUA,
            8192,
            100,
            &[]
        )
        .await
        .error,
        0
    );
    let r = c.read(4096, 4196).await;
    assert!(r.data.iter().all(|&b| b == 0));
    assert_eq!(c.read(0, 4).await.data, b"abcd");
    // Trim whole blocks; trim is only a hint so just check success and deallocation.
    c.write(64 * 1024, &[9u8; 8192]).await;
    let before = dev.allocated_blocks();
    assert_eq!(c.call(CMD_TRIM, 0, 64 * 1024, 8192, &[]).await.error, 0);
    assert_eq!(dev.allocated_blocks(), before - 2);
    assert_eq!(c.call(CMD_TRIM, CMD_FLAG_FUA, 0, 0, &[]).await.error, 0);
    // Zero-length read and write.
    assert_eq!(c.read(0, 0).await.error, 0);
    assert_eq!(c.write(5, &[]).await, 0);
    // Last byte of the export.
    assert_eq!(c.write(MIB - 1, b"z").await, 0);
    assert_eq!(c.read(MIB - 1, 1).await.data, b"z");
    c.disc().await;
    assert!(c.closed().await);
}

async fn simple_reply_errors_keep_connection_alive(p: Pipe) {
    let mut c = connect(p, Arc::new(MemDevice::new(MIB)), false, false).await;
    let max = 32u32 << 20;
    // Unknown command and unknown flags.
    assert_eq!(c.call(42, 0, 0, 0, &[]).await.error, EINVAL);
    assert_eq!(c.call(CMD_READ, 1 << 12, 0, 1, &[]).await.error, EINVAL);
    // DF is only valid once structured replies are negotiated.
    assert_eq!(c.call(CMD_READ, CMD_FLAG_DF, 0, 1, &[]).await.error, EINVAL);
    // REQ_ONE on a read, FAST_ZERO (not advertised).
    assert_eq!(
        c.call(CMD_READ, CMD_FLAG_REQ_ONE, 0, 1, &[]).await.error,
        EINVAL
    );
    assert_eq!(
        c.call(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 1, &[])
            .await
            .error,
        EINVAL
    );
    // Out of range.
    assert_eq!(c.read(MIB, 1).await.error, EINVAL);
    assert_eq!(c.read(u64::MAX, 2).await.error, EINVAL);
    assert_eq!(c.call(CMD_TRIM, 0, MIB - 1, 2, &[]).await.error, EINVAL);
    assert_eq!(c.call(CMD_CACHE, 0, MIB, 1, &[]).await.error, EINVAL);
    assert_eq!(
        c.call(CMD_WRITE_ZEROES, 0, MIB - 1, 2, &[]).await.error,
        ENOSPC
    );
    // Writes past the end get ENOSPC and their payload is consumed.
    assert_eq!(c.write(MIB - 2, b"abcd").await, ENOSPC);
    // Oversized requests.
    assert_eq!(c.read(0, max + 1).await.error, EINVAL);
    let big = vec![1u8; max as usize + 1];
    assert_eq!(c.write(0, &big).await, EINVAL);
    // Block status without structured replies / meta contexts.
    assert_eq!(c.call(CMD_BLOCK_STATUS, 0, 0, 512, &[]).await.error, EINVAL);
    // Flush with nonzero reserved fields.
    assert_eq!(c.call(CMD_FLUSH, 0, 1, 0, &[]).await.error, EINVAL);
    // Still healthy.
    assert_eq!(c.write(0, b"ok").await, 0);
    assert_eq!(c.read(0, 2).await.data, b"ok");
}

async fn structured_replies(p: Pipe) {
    let mut c = connect(p, Arc::new(MemDevice::new(MIB)), true, true).await;
    assert_ne!(c.flags & FLAG_SEND_DF, 0);
    let data = pattern(3, 70_000);
    assert_eq!(c.write(4096, &data).await, 0);
    let r = c.read(4096, 70_000).await;
    assert!(r.structured);
    assert_eq!(r.error, 0);
    assert_eq!(r.data, data);
    assert!(r.chunk_types.iter().all(|&t| t == REPLY_TYPE_OFFSET_DATA
        || t == REPLY_TYPE_OFFSET_HOLE
        || t == REPLY_TYPE_NONE));
    // DF: at most one content chunk.
    let r = c.call(CMD_READ, CMD_FLAG_DF, 4096, 65536, &[]).await;
    assert_eq!(r.error, 0);
    assert_eq!(
        r.chunk_types
            .iter()
            .filter(|&&t| t != REPLY_TYPE_NONE)
            .count(),
        1
    );
    assert_eq!(r.data, &data[..65536]);
    // Zero-length read.
    let r = c.read(0, 0).await;
    assert_eq!((r.error, r.chunk_types.clone()), (0, vec![REPLY_TYPE_NONE]));
    // Errors come as error chunks with a message.
    let r = c.read(MIB, 1).await;
    assert_eq!(r.error, EINVAL);
    assert!(!r.message.is_empty());
    assert_eq!(r.chunk_types, vec![REPLY_TYPE_ERROR]);
    assert_eq!(c.read(0, (32 << 20) + 1).await.error, EOVERFLOW);
    assert_eq!(c.write(MIB, b"x").await, ENOSPC);
    assert_eq!(c.call(77, 0, 0, 0, &[]).await.error, EINVAL);
    // Non-read successes may be simple replies even in structured mode.
    assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]).await.error, 0);
}

async fn block_status(p: Pipe) {
    let mut c = connect(p, Arc::new(MemDevice::new(MIB)), true, true).await;
    c.write(8192, &[1u8; 4096]).await;
    let r = c.call(CMD_BLOCK_STATUS, 0, 0, 65536, &[]).await;
    assert_eq!(r.error, 0);
    assert_eq!(r.chunk_types, vec![REPLY_TYPE_BLOCK_STATUS]);
    assert_eq!(r.status.len(), 1);
    let (ctx, d) = &r.status[0];
    assert_ne!(*ctx, 0);
    let hz = STATE_HOLE | STATE_ZERO;
    assert_eq!(d, &vec![(8192, hz), (4096, 0), (65536 - 12288, hz)]);
    // REQ_ONE: exactly one descriptor, within the request.
    let r = c
        .call(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 4096, 65536, &[])
        .await;
    assert_eq!(r.status[0].1, vec![(4096, hz)]);
    // Unaligned and short queries are clipped to the request.
    let r = c.call(CMD_BLOCK_STATUS, 0, 8000, 300, &[]).await;
    assert_eq!(r.status[0].1, vec![(192, hz), (108, 0)]);
    // Beyond the end, zero length, bad flag.
    assert_eq!(
        c.call(CMD_BLOCK_STATUS, 0, MIB - 512, 1024, &[])
            .await
            .error,
        EINVAL
    );
    assert_eq!(c.call(CMD_BLOCK_STATUS, 0, 0, 0, &[]).await.error, EINVAL);
    assert_eq!(
        c.call(CMD_BLOCK_STATUS, CMD_FLAG_DF, 0, 512, &[])
            .await
            .error,
        EINVAL
    );
    // Whole-device query larger than the max payload is fine (length is a hint).
    let r = c.call(CMD_BLOCK_STATUS, 0, 0, MIB as u32, &[]).await;
    let total: u64 = r.status[0].1.iter().map(|d| d.0 as u64).sum();
    assert_eq!(total, MIB);
}

async fn block_status_needs_meta_context(p: Pipe) {
    // Structured but no SET_META_CONTEXT.
    let mut c = connect(p, Arc::new(MemDevice::new(MIB)), true, false).await;
    let r = c.call(CMD_BLOCK_STATUS, 0, 0, 512, &[]).await;
    assert_eq!(r.error, EINVAL);
}

async fn read_only_export(p: Pipe) {
    for (dev, forced) in [
        (MemDevice::new(MIB), true),
        (MemDevice::new_read_only(MIB), false),
    ] {
        let mut cfg = ServerConfig::new("d");
        cfg.read_only = forced;
        let (mut c, _h) = start_on(p, Arc::new(dev), cfg);
        c.negotiate("d", true, false).await;
        assert_ne!(c.flags & FLAG_READ_ONLY, 0);
        assert_eq!(c.flags & (FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES), 0);
        assert_eq!(c.write(0, b"nope").await, EPERM);
        assert_eq!(c.call(CMD_TRIM, 0, 0, 4096, &[]).await.error, EPERM);
        assert_eq!(c.call(CMD_WRITE_ZEROES, 0, 0, 4096, &[]).await.error, EPERM);
        assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]).await.error, 0);
        let r = c.read(0, 4).await;
        assert_eq!((r.error, r.data), (0, vec![0; 4]));
    }
}

async fn device_errors_are_mapped(p: Pipe) {
    let dev = Arc::new(TestDevice::new(MIB));
    let mut c = connect(p, dev.clone(), true, false).await;
    *dev.fail.lock().unwrap() = Some(std::io::ErrorKind::PermissionDenied);
    let r = c.read(512, 512).await;
    assert_eq!(r.error, EPERM);
    // Read failures carry the offset.
    assert_eq!(r.error_offset, Some(512));
    *dev.fail.lock().unwrap() = Some(std::io::ErrorKind::Other);
    assert_eq!(c.write(0, b"x").await, EIO);
    *dev.fail.lock().unwrap() = None;
    assert_eq!(c.write(0, b"x").await, 0);

    // Simple mode, ENOSPC via raw errno.
    let mut c = connect(p, dev.clone(), false, false).await;
    *dev.fail.lock().unwrap() = Some(std::io::ErrorKind::InvalidInput);
    assert_eq!(c.read(0, 8).await.error, EINVAL);
}

async fn panicking_device_yields_eio(p: Pipe) {
    let mut d = TestDevice::new(MIB);
    d.panic_on_read = true;
    let mut c = connect(p, Arc::new(d), false, false).await;
    assert_eq!(c.read(0, 8).await.error, EIO);
    assert_eq!(c.write(0, b"still alive").await, 0);
}

async fn replies_out_of_order(p: Pipe) {
    let mut d = TestDevice::new(MIB);
    d.slow_offset = Some(0);
    d.delay = Duration::from_millis(300);
    let mut c = connect(p, Arc::new(d), true, false).await;
    c.send_req(CMD_READ, 0, 100, 0, 512, &[]).await;
    c.send_req(CMD_WRITE, 0, 101, 4096, 3, b"abc").await;
    c.send_req(CMD_READ, 0, 102, 8192, 512, &[]).await;
    let order: Vec<u64> = [
        c.recv().await.unwrap(),
        c.recv().await.unwrap(),
        c.recv().await.unwrap(),
    ]
    .iter()
    .map(|r| r.cookie)
    .collect();
    assert_eq!(
        order.last(),
        Some(&100),
        "slow request should finish last: {order:?}"
    );
}

async fn bounded_in_flight_requests(p: Pipe) {
    let mut d = TestDevice::new(MIB);
    d.delay = Duration::from_millis(20);
    let d = Arc::new(d);
    let mut cfg = ServerConfig::new("d");
    cfg.max_inflight_requests = 3;
    let (mut c, _h) = start_on(p, d.clone(), cfg);
    c.negotiate("d", false, false).await;
    for i in 0..20u64 {
        c.send_req(CMD_WRITE, 0, 1000 + i, i * 4096, 16, &[i as u8; 16])
            .await;
    }
    let mut got = Vec::new();
    for _ in 0..20 {
        let r = c.recv().await.unwrap();
        assert_eq!(r.error, 0);
        got.push(r.cookie);
    }
    got.sort();
    assert_eq!(got, (1000..1020).collect::<Vec<_>>());
    let max = d.max_in_flight.load(Ordering::SeqCst);
    assert!((1..=3).contains(&max), "max in flight {max}");
}

async fn bad_magic_drops_only_that_connection(p: Pipe) {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(MIB));
    let mut good = connect(p, dev.clone(), false, false).await;
    let (mut bad, h) = start_on(p, dev.clone(), ServerConfig::new("d"));
    bad.negotiate("d", false, false).await;
    bad.s.write_all(&[0xffu8; 28]).await.unwrap();
    assert!(bad.closed().await);
    assert!(h.await.unwrap().is_err());
    assert_eq!(good.write(0, b"fine").await, 0);
    assert_eq!(good.read(0, 4).await.data, b"fine");
}

async fn disc_answers_in_flight_requests_first(p: Pipe) {
    let mut d = TestDevice::new(MIB);
    d.delay = Duration::from_millis(200);
    let (mut c, h) = start_on(p, Arc::new(d), ServerConfig::new("d"));
    c.negotiate("d", false, false).await;
    c.send_req(CMD_WRITE, 0, 7, 0, 4, b"data").await;
    c.disc().await;
    let r = c.recv().await.unwrap();
    assert_eq!((r.cookie, r.error), (7, 0));
    assert!(c.closed().await);
    h.await.unwrap().unwrap();
}

async fn many_connections(p: Pipe) {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(4 * MIB));
    let mut tasks = Vec::new();
    for i in 0..24u64 {
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(p, dev, i % 2 == 0, false).await;
            let data = pattern(i as u8, 64 * 1024);
            for round in 0..4u64 {
                let off = i * 128 * 1024 + round * 4096;
                assert_eq!(c.write(off, &data[..8192]).await, 0);
                assert_eq!(c.read(off, 8192).await.data, &data[..8192]);
            }
            c.disc().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn multi_conn_flush_covers_other_connections(p: Pipe) {
    let dev = Arc::new(TestDevice::new(MIB));
    let mut a = connect(p, dev.clone(), false, false).await;
    let mut b = connect(p, dev.clone(), true, false).await;
    assert_ne!(a.flags & FLAG_CAN_MULTI_CONN, 0);
    assert_eq!(a.write(0, b"from-a").await, 0);
    assert!(dev.durable.lock().unwrap().is_empty());
    assert_eq!(b.call(CMD_FLUSH, 0, 0, 0, &[]).await.error, 0);
    assert_eq!(
        dev.durable.lock().unwrap().as_slice(),
        &[(0, b"from-a".to_vec())]
    );
    // FUA writes are durable on reply.
    assert_eq!(
        b.call(CMD_WRITE, CMD_FLAG_FUA, 100, 3, b"fua").await.error,
        0
    );
    assert!(dev
        .durable
        .lock()
        .unwrap()
        .iter()
        .any(|(o, d)| *o == 100 && d == b"fua"));
}

/// A device with per-connection state: each connection gets a handle of its own, whose
/// flushes say which handle answered (the first flush of each handle fails, as a flush
/// after a write-back error does once per connection).
struct PerConnection {
    mem: Arc<MemDevice>,
    handles: Arc<std::sync::atomic::AtomicUsize>,
    /// `None` for the export's own device; a handle's number otherwise.
    id: Option<usize>,
    flushes: Arc<std::sync::Mutex<Vec<Option<usize>>>>,
}

impl BlockDevice for PerConnection {
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.mem.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> std::io::Result<()> {
        self.mem.write_at(buf, offset, fua)
    }
    fn flush(&self) -> std::io::Result<()> {
        let mut f = self.flushes.lock().unwrap();
        let first = !f.contains(&self.id);
        f.push(self.id);
        if first && self.id.is_some() {
            return Err(std::io::Error::other("lost writes"));
        }
        Ok(())
    }
    fn for_connection(&self) -> Option<Arc<dyn BlockDevice>> {
        Some(Arc::new(PerConnection {
            mem: self.mem.clone(),
            handles: self.handles.clone(),
            id: Some(self.handles.fetch_add(1, Ordering::SeqCst)),
            flushes: self.flushes.clone(),
        }))
    }
}

async fn each_connection_is_served_by_its_own_handle(p: Pipe) {
    let dev = Arc::new(PerConnection {
        mem: Arc::new(MemDevice::new(MIB)),
        handles: Default::default(),
        id: None,
        flushes: Default::default(),
    });
    let mut a = connect(p, dev.clone(), false, false).await;
    let mut b = connect(p, dev.clone(), true, false).await;
    assert_eq!(dev.handles.load(Ordering::SeqCst), 2);
    assert_eq!(a.call(CMD_FLUSH, 0, 0, 0, &[]).await.error, EIO);
    assert_eq!(a.call(CMD_FLUSH, 0, 0, 0, &[]).await.error, 0);
    assert_eq!(b.call(CMD_FLUSH, 0, 0, 0, &[]).await.error, EIO);
    assert_eq!(b.call(CMD_FLUSH, 0, 0, 0, &[]).await.error, 0);
    let f = dev.flushes.lock().unwrap().clone();
    assert_eq!(f.len(), 4);
    assert!(
        f.iter().all(Option::is_some),
        "the export's own device never flushed: {f:?}"
    );
    assert_ne!(f[0], f[2], "two connections, two handles: {f:?}");
}

/// A WRITE header claiming 4 GiB, then the client hangs up: the server refuses
/// it without allocating the payload, and the connection ends on its own.
async fn oversized_write_then_hang_up(p: Pipe) {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(MIB));
    let mut good = connect(p, dev.clone(), false, false).await;
    let (mut bad, h) = start_on(p, dev.clone(), ServerConfig::new("d"));
    bad.negotiate("d", true, false).await;
    bad.send_req(CMD_WRITE, 0, 1, 0, u32::MAX, &[7u8; 100 << 10])
        .await;
    bad.s.shutdown().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), h)
        .await
        .expect("connection ended")
        .unwrap();
    assert!(r.is_err(), "EOF inside a payload is a protocol error");
    assert_eq!(good.write(0, b"fine").await, 0);
    assert_eq!(good.read(0, 4).await.data, b"fine");
}

/// A WRITE whose payload stops short: nothing is written, no reply is sent for
/// it, the replies to earlier requests still go out.
async fn truncated_payload_ends_only_that_connection(p: Pipe) {
    let dev = Arc::new(TestDevice::new(MIB));
    let mut good = connect(p, dev.clone(), false, false).await;
    let (mut bad, h) = start_on(p, dev.clone(), ServerConfig::new("d"));
    bad.negotiate("d", false, false).await;
    assert_eq!(bad.write(0, b"first").await, 0);
    bad.send_req(CMD_WRITE, 0, 2, 4096, 4096, &[1u8; 100]).await;
    bad.s.shutdown().await.unwrap();
    assert!(bad.closed().await);
    assert!(h.await.unwrap().is_err());
    assert_eq!(good.read(4096, 4).await.data, [0u8; 4]);
    assert_eq!(good.read(0, 5).await.data, b"first");
}

/// A client that floods large READs and never reads a reply holds at most its
/// byte budget in the server, and other connections go on meanwhile.
async fn stuck_client_stalls_only_itself(p: Pipe) {
    let dev = Arc::new(TestDevice::new(64 * MIB));
    let mut cfg = ServerConfig::new("d");
    cfg.max_request = 4 << 20;
    cfg.max_inflight_bytes = 8 << 20;
    let (mut stuck, _h) = start_on(p, dev.clone(), cfg);
    stuck.negotiate("d", false, false).await;
    let mut good = connect(p, dev.clone(), true, false).await;
    // Sending stops once the server no longer reads (budget spent, buffers full;
    // 28 MB of headers is more than any pipe here buffers).
    let flood = async {
        for i in 0..1_000_000u64 {
            stuck.send_req(CMD_READ, 0, i, 0, 4 << 20, &[]).await;
        }
    };
    let sent = tokio::time::timeout(Duration::from_secs(5), flood).await;
    assert!(sent.is_err(), "the server kept reading without a budget");
    for i in 0..20u64 {
        let data = pattern(i as u8, 4096);
        assert_eq!(good.write(i * 4096, &data).await, 0);
        assert_eq!(good.read(i * 4096, 4096).await.data, data);
    }
}
