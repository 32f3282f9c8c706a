//! `damocles serve`: assemble the array and serve it over NBD until SIGINT/SIGTERM.

use crate::blockdev::ArrayDevice;
use crate::{members, units};
use anyhow::{bail, Context, Result};
use damocles_engine::{Array, Health};
use damocles_nbd::{BlockDevice, Listener, ServerConfig};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where and how to serve.
#[derive(clap::Args, Clone)]
pub struct ServeOpts {
    /// TCP address to listen on. Only loopback addresses unless --allow-remote.
    #[arg(long, default_value = "127.0.0.1:10809", conflicts_with = "socket")]
    pub listen: String,
    /// Listen on this Unix socket instead of TCP.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Export name (default: the array's name, or "damocles"). Clients asking for the
    /// empty name get this export too.
    #[arg(long)]
    pub export: Option<String>,
    /// Refuse writes.
    #[arg(long)]
    pub read_only: bool,
    /// Allow a non-loopback --listen address. NBD traffic is not encrypted.
    #[arg(long)]
    pub allow_remote: bool,
    /// Writes buffered in memory before a commit is forced (default: a tenth of RAM, at
    /// most 1G). Memory use peaks near 2.5 times this while a commit runs. Clients' FLUSH
    /// and a 5 s timer commit sooner.
    #[arg(long, value_parser = crate::units::parse_size, value_name = "SIZE")]
    pub dirty_budget: Option<u64>,
}

/// Assemble the array on MEMBER... and serve it over NBD.
///
/// Missing members make the array degraded (it says so). SIGINT or SIGTERM stops accepting
/// clients, lets in-flight requests finish, flushes, and exits 0. The environment variable
/// DAMOCLES_WORKERS sets the number of network threads (default: half the cores).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub opts: ServeOpts,
    #[arg(required = true, value_name = "MEMBER")]
    pub members: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let array = members::assemble_with(&a.members, a.opts.read_only, a.opts.dirty_budget)?;
    serve(Arc::new(array), &a.opts, |_| {})
}

fn tcp_addrs(listen: &str, allow_remote: bool) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {listen}"))?
        .collect();
    if addrs.is_empty() {
        bail!("--listen {listen}: no address");
    }
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        if !allow_remote {
            bail!(
                "--listen {listen}: {} is not a loopback address; NBD is unencrypted, so serving \
                 beyond this machine needs --allow-remote",
                a.ip()
            );
        }
        eprintln!("warning: serving on {a}: NBD traffic is not encrypted or authenticated");
    }
    Ok(addrs)
}

/// Removes a leftover socket file that nobody listens on; refuses one in use.
fn clear_stale_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        bail!("--socket {}: exists and is not a socket", path.display());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "--socket {}: another server is listening there",
            path.display()
        );
    }
    std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))
}

/// Serves until a signal; `ready` is called with the client URI once listening.
pub fn serve(array: Arc<Array>, o: &ServeOpts, ready: impl FnOnce(&str)) -> Result<()> {
    let st = array.status();
    let export = o.export.clone().unwrap_or_else(|| {
        if st.name.is_empty() {
            "damocles".into()
        } else {
            st.name.clone()
        }
    });
    let mut cfg = ServerConfig::new(export.clone());
    cfg.description = format!("damocles {} array {}", st.level, st.uuid);
    cfg.read_only = o.read_only;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("--export: {e}"))?;
    match st.health {
        Health::Ok => {}
        Health::Degraded => {
            let gone: Vec<String> = st
                .members
                .iter()
                .filter(|m| m.state != damocles_engine::MemberHealth::Ok)
                .map(|m| format!("member {} {:?}", m.index, m.state).to_lowercase())
                .collect();
            eprintln!(
                "warning: array is DEGRADED ({}); serving anyway",
                gone.join(", ")
            );
        }
        Health::Failed => eprintln!(
            "warning: array has FAILED: more members are missing than {} tolerates; \
             reads of lost data return errors",
            st.level
        ),
    }
    for n in &st.notes {
        eprintln!("note: {n}");
    }
    // The async side only parses requests and moves bytes; device work runs on the blocking
    // pool. Fewer async workers mean fewer hand-offs: on 2 cores one worker served 27% more
    // 4 KiB reads than two (same run).
    let workers: usize = std::env::var("DAMOCLES_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Buffered writes reach the members within a few seconds even if no client flushes.
    array.spawn_flusher(std::time::Duration::from_secs(5));
    let dev: Arc<dyn BlockDevice> = Arc::new(ArrayDevice(array));
    rt.block_on(async move {
        let (listener, uri) = match &o.socket {
            Some(path) => {
                clear_stale_socket(path)?;
                let l = Listener::bind_unix(path)
                    .with_context(|| format!("--socket {}", path.display()))?;
                (l, format!("nbd+unix:///{export}?socket={}", path.display()))
            }
            None => {
                let addrs = tcp_addrs(&o.listen, o.allow_remote)?;
                let l = Listener::bind_tcp(&addrs[..])
                    .await
                    .with_context(|| format!("--listen {}", o.listen))?;
                let a = l.tcp_addr().context("bound address")?;
                let host = match a {
                    SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
                    SocketAddr::V4(v4) => v4.ip().to_string(),
                };
                (l, format!("nbd://{host}:{}/{export}", a.port()))
            }
        };
        println!(
            "serving {} '{}' ({}, {}{}) at {uri}",
            st.level,
            export,
            units::human(st.size),
            format!("{:?}", st.health).to_lowercase(),
            if o.read_only { ", read-only" } else { "" }
        );
        ready(&uri);
        use std::io::Write;
        std::io::stdout().flush().ok();
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("stopping: finishing in-flight requests and flushing");
            let _ = tx.send(true);
        });
        let r = damocles_nbd::serve(vec![listener], dev, Arc::new(cfg), rx).await;
        if let Some(p) = &o.socket {
            let _ = std::fs::remove_file(p);
        }
        r.context("NBD server")?;
        eprintln!("stopped; all writes flushed");
        Ok(())
    })
}
