//! Shared harness: push a byte stream through `serve_connection` as a client.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use damocles_nbd::wire::*;
use damocles_nbd::{serve_connection, MemDevice, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Feed `input` as the whole client side of a connection; the server must
/// terminate without panicking. Returns the server's output.
pub fn run_stream(input: &[u8]) -> Vec<u8> {
    let input = input.to_vec();
    runtime().block_on(async move {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut cfg = ServerConfig::new("");
        cfg.max_request = 1 << 16;
        cfg.max_inflight_bytes = 1 << 17;
        cfg.handshake_timeout = Duration::from_secs(5);
        let srv = tokio::spawn(serve_connection(
            server,
            Arc::new(MemDevice::new(1 << 20)),
            Arc::new(cfg),
        ));
        let (mut r, mut w) = tokio::io::split(client);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = r.read_to_end(&mut out).await;
            out
        });
        let _ = w.write_all(&input).await;
        let _ = w.shutdown().await;
        let joined = tokio::time::timeout(Duration::from_secs(20), srv)
            .await
            .expect("server did not terminate");
        if let Err(e) = joined {
            panic!("server task panicked: {e}");
        }
        drop(w);
        reader.await.expect("reader")
    })
}

/// Client bytes for a handshake that reaches transmission.
pub fn handshake_prefix(structured: bool) -> Vec<u8> {
    let mut v = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    let mut opt = |o: u32, d: &[u8]| {
        v.extend_from_slice(&IHAVEOPT.to_be_bytes());
        v.extend_from_slice(&o.to_be_bytes());
        v.extend_from_slice(&(d.len() as u32).to_be_bytes());
        v.extend_from_slice(d);
    };
    if structured {
        opt(OPT_STRUCTURED_REPLY, &[]);
        let mut m = 0u32.to_be_bytes().to_vec();
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&15u32.to_be_bytes());
        m.extend_from_slice(b"base:allocation");
        opt(OPT_SET_META_CONTEXT, &m);
    }
    opt(OPT_GO, &[0, 0, 0, 0, 0, 0]);
    v
}
