//! Listener helper over TCP and Unix sockets, and graceful shutdown.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use damocles_nbd::wire::*;
use damocles_nbd::{serve, serve_connection_with_shutdown, Listener, MemDevice, ServerConfig};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_unix_with_graceful_shutdown() {
    // Removed when the test ends, passed or not.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbd.sock");

    let mut d = TestDevice::new(MIB);
    d.slow_offset = Some(4096);
    d.delay = Duration::from_millis(400);
    let dev = Arc::new(d);
    let tcp = Listener::bind_tcp("127.0.0.1:0").await.unwrap();
    let addr = tcp.tcp_addr().unwrap();
    let unix = Listener::bind_unix(&sock).unwrap();
    let (tx, rx) = watch::channel(false);
    let server = tokio::spawn(serve(
        vec![tcp, unix],
        dev.clone(),
        Arc::new(ServerConfig::new("d")),
        rx,
    ));

    let mut a = Client::new(Box::new(TcpStream::connect(addr).await.unwrap()));
    a.negotiate("d", true, true).await;
    let mut b = Client::new(Box::new(UnixStream::connect(&sock).await.unwrap()));
    b.negotiate("", false, false).await;
    assert_eq!(b.write(0, b"unix").await, 0);
    assert_eq!(a.read(0, 4).await.data, b"unix");

    // A slow write is in flight when shutdown is requested: it must still be answered.
    a.send_req(CMD_WRITE, 0, 55, 4096, 4, b"slow").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let flushes_before = dev.flushes.load(Ordering::SeqCst);
    tx.send(true).unwrap();
    let r = a.recv().await.unwrap();
    assert_eq!((r.cookie, r.error), (55, 0));
    assert!(a.closed().await);
    assert!(b.closed().await);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // serve() flushes the device after draining.
    assert!(dev.flushes.load(Ordering::SeqCst) > flushes_before);
    assert!(dev
        .durable
        .lock()
        .unwrap()
        .iter()
        .any(|(_, d)| d == b"slow"));
    // No longer accepting.
    assert!(TcpStream::connect(addr).await.is_err());
    let _ = std::fs::remove_file(&sock);
}

#[tokio::test]
async fn shutdown_closes_idle_handshake() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let (tx, rx) = watch::channel(false);
    let h = tokio::spawn(serve_connection_with_shutdown(
        b,
        Arc::new(MemDevice::new(MIB)),
        Arc::new(ServerConfig::new("d")),
        rx,
    ));
    let mut c = Client::new(Box::new(a));
    c.greeting().await;
    tx.send(true).unwrap();
    assert!(c.closed().await);
    h.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit() {
    let tcp = Listener::bind_tcp("127.0.0.1:0").await.unwrap();
    let addr = tcp.tcp_addr().unwrap();
    let mut cfg = ServerConfig::new("d");
    cfg.max_connections = 1;
    let (tx, rx) = watch::channel(false);
    let server = tokio::spawn(serve(
        vec![tcp],
        Arc::new(MemDevice::new(MIB)),
        Arc::new(cfg),
        rx,
    ));
    let mut a = Client::new(Box::new(TcpStream::connect(addr).await.unwrap()));
    a.negotiate("d", false, false).await;
    let mut b = Client::new(Box::new(TcpStream::connect(addr).await.unwrap()));
    assert!(b.closed().await);
    assert_eq!(a.write(0, b"x").await, 0);
    tx.send(true).unwrap();
    server.await.unwrap().unwrap();
}

/// Real sockets take the blocking transport (not the in-memory bridge): a slow
/// request must not hold up fast ones there either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_over_sockets() {
    // Removed when the test ends, passed or not.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbd.sock");
    let mut d = TestDevice::new(MIB);
    d.slow_offset = Some(0);
    d.delay = Duration::from_millis(300);
    let tcp = Listener::bind_tcp("127.0.0.1:0").await.unwrap();
    let addr = tcp.tcp_addr().unwrap();
    let unix = Listener::bind_unix(&sock).unwrap();
    let (tx, rx) = watch::channel(false);
    let server = tokio::spawn(serve(
        vec![tcp, unix],
        Arc::new(d),
        Arc::new(ServerConfig::new("d")),
        rx,
    ));
    let a = Client::new(Box::new(TcpStream::connect(addr).await.unwrap()));
    let b = Client::new(Box::new(UnixStream::connect(&sock).await.unwrap()));
    for (mut c, structured) in [(a, true), (b, false)] {
        c.negotiate("d", structured, false).await;
        c.send_req(CMD_READ, 0, 100, 0, 512, &[]).await;
        for i in 0..8u64 {
            c.send_req(CMD_WRITE, 0, 101 + i, 4096 * (i + 1), 3, b"abc")
                .await;
        }
        c.send_req(CMD_READ, 0, 200, 8192, 3, &[]).await;
        let mut order = Vec::new();
        for _ in 0..10 {
            let r = c.recv().await.unwrap();
            assert_eq!(r.error, 0);
            order.push(r.cookie);
        }
        assert_eq!(order.last(), Some(&100), "slow request should finish last");
        c.disc().await;
        assert!(c.closed().await);
    }
    tx.send(true).unwrap();
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_file(&sock);
}

/// A client that never reads its replies cannot keep the server from exiting:
/// after the grace period its connection is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_drops_stuck_clients() {
    let tcp = Listener::bind_tcp("127.0.0.1:0").await.unwrap();
    let addr = tcp.tcp_addr().unwrap();
    let mut cfg = ServerConfig::new("d");
    cfg.shutdown_grace = Duration::from_millis(300);
    let (tx, rx) = watch::channel(false);
    let server = tokio::spawn(serve(
        vec![tcp],
        Arc::new(MemDevice::new(4 * MIB)),
        Arc::new(cfg),
        rx,
    ));
    let mut c = Client::new(Box::new(TcpStream::connect(addr).await.unwrap()));
    c.negotiate("d", false, false).await;
    // Far more reply bytes than the socket buffers hold, none of them read.
    for i in 0..64u64 {
        c.send_req(CMD_READ, 0, i, 0, 4 << 20, &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stuck on a client that does not read")
        .unwrap()
        .unwrap();
    // The connection was cut, not left to finish once the client reads.
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(Ok(n @ 1..)) =
        tokio::time::timeout(Duration::from_secs(5), c.s.read(&mut buf)).await
    {
        got += n as u64;
    }
    // 16 replies fit the byte budget; only what the socket buffers held may arrive.
    assert!(got < 32 << 20, "{got} reply bytes arrived after the cut");
}

/// When the grace period runs out, the final flush still comes after the
/// requests already running on the device: none of their writes is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_cut_waits_for_running_requests_before_flushing() {
    let tcp = Listener::bind_tcp("127.0.0.1:0").await.unwrap();
    let addr = tcp.tcp_addr().unwrap();
    let mut d = TestDevice::new(MIB);
    d.slow_offset = Some(8192);
    d.delay = Duration::from_millis(800);
    let dev = Arc::new(d);
    let mut cfg = ServerConfig::new("d");
    cfg.shutdown_grace = Duration::from_millis(100);
    let (tx, rx) = watch::channel(false);
    let server = tokio::spawn(serve(vec![tcp], dev.clone(), Arc::new(cfg), rx));
    let mut c = Client::new(Box::new(TcpStream::connect(addr).await.unwrap()));
    c.negotiate("d", false, false).await;
    c.send_req(CMD_WRITE, 0, 1, 8192, 4, b"late").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(dev.dirty.lock().unwrap().is_empty());
    assert!(dev
        .durable
        .lock()
        .unwrap()
        .iter()
        .any(|(_, d)| d == b"late"));
}

/// A client that keeps sending requests cannot hold the server up: at shutdown
/// it stops at a request boundary, answers what it read, and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_client_still_sending() {
    let tcp = Listener::bind_tcp("127.0.0.1:0").await.unwrap();
    let addr = tcp.tcp_addr().unwrap();
    let dev = Arc::new(TestDevice::new(MIB));
    let (tx, rx) = watch::channel(false);
    let server = tokio::spawn(serve(
        vec![tcp],
        dev.clone(),
        Arc::new(ServerConfig::new("d")),
        rx,
    ));
    let mut c = Client::new(Box::new(TcpStream::connect(addr).await.unwrap()));
    c.negotiate("d", false, false).await;
    let (mut rd, mut wr) = tokio::io::split(c.s);
    let sender = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut sent = 0u64;
        loop {
            let h = RequestHeader {
                flags: 0,
                command: CMD_WRITE,
                cookie: sent,
                offset: (sent % 256) * 4096,
                len: 4096,
            };
            let mut b = encode_request_header(&h).to_vec();
            b.extend_from_slice(&[sent as u8; 4096]);
            if wr.write_all(&b).await.is_err() {
                return sent;
            }
            sent += 1;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server held up by a client still sending")
        .unwrap()
        .unwrap();
    // Every reply is whole and successful, in any order, each cookie once.
    let mut seen = std::collections::HashSet::new();
    let mut h = [0u8; 16];
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), rd.read_exact(&mut h)).await
    {
        assert_eq!(h[0..4], SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(h[4..8], [0; 4]);
        assert!(seen.insert(u64::from_be_bytes(h[8..16].try_into().unwrap())));
    }
    assert!(!seen.is_empty());
    let sent = tokio::time::timeout(Duration::from_secs(10), sender)
        .await
        .expect("the client's writes fail once the server is gone")
        .unwrap();
    assert!((seen.len() as u64) <= sent);
}
