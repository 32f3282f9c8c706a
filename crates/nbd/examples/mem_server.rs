//! Serve an in-memory export for manual testing with real clients:
//! `cargo run --example mem_server -- 127.0.0.1:10809 [size_mib] [unix_path]`.
//! Ctrl-C shuts down gracefully.

use std::sync::Arc;

use damocles_nbd::{serve, Listener, MemDevice, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:10809".into());
    let mib: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let mut listeners = vec![Listener::bind_tcp(&addr).await?];
    if let Some(path) = args.next() {
        listeners.push(Listener::bind_unix(path)?);
    }
    let mut cfg = ServerConfig::new("mem");
    cfg.description = "damocles in-memory test export".into();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    eprintln!("serving {mib} MiB export 'mem' on {addr}");
    serve(
        listeners,
        Arc::new(MemDevice::new(mib << 20)),
        Arc::new(cfg),
        rx,
    )
    .await?;
    Ok(())
}
