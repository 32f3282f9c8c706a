//! `damocles serve`: assemble the array and serve it over NBD until SIGINT/SIGTERM.

use crate::blockdev::ArrayDevice;
use crate::control::server::{ControlServer, Shared};
use crate::tls::{TlsArgs, TlsMode};
use crate::{control, hook, members, units};
use anyhow::{bail, Context, Result};
use damocles_engine::{Array, AssembleOptions, DirectIo, Event, Health, Status};
use damocles_nbd::{BlockDevice, Export, ExportStats, Exports, Listener, ServerConfig};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a stopping server waits for a running rebuild or scrub to reach a checkpoint.
const JOB_STOP_WAIT: Duration = Duration::from_secs(30);

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
    /// Allow a non-loopback --listen address without TLS required (plain NBD is neither
    /// encrypted nor authenticated). With --tls require it is not needed.
    #[arg(long)]
    pub allow_remote: bool,
    /// Writes buffered in memory before a commit is forced (default: a tenth of RAM, at
    /// most 1G). Memory use peaks near 2.5 times this while a commit runs. Clients' FLUSH
    /// and a 5 s timer commit sooner.
    #[arg(long, value_parser = crate::units::parse_size, value_name = "SIZE")]
    pub dirty_budget: Option<u64>,
    /// Control socket for `damocles status/fail/add/rebuild/...` (default:
    /// $XDG_RUNTIME_DIR/damocles/UUID.sock, or /run/damocles/UUID.sock without
    /// XDG_RUNTIME_DIR; its directory is made 0700, the socket 0600). Other commands find a
    /// socket elsewhere only with --array PATH.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Run CMD (with `sh -c`) for every event: member failed, spare activated, rebuild
    /// started/finished, checksum repaired, unrecoverable block, ... The event's JSON is on
    /// its stdin and its kind in $DAMOCLES_EVENT. Hooks run one at a time, off the I/O
    /// path; one that fails is logged, one that runs over 60 s is killed.
    #[arg(long, value_name = "CMD")]
    pub on_event: Option<String>,
    /// Rate limit of rebuilds, in bytes per second written to members (0 = none). Rebuilds
    /// start by themselves when a member fails or a spare is added.
    #[arg(long, default_value = "200M", value_parser = crate::units::parse_size, value_name = "RATE")]
    pub rebuild_rate: u64,
    /// A member read that takes longer than this is answered from the other members when
    /// the array's redundancy allows (the slow read stays counted in flight).
    #[arg(long, default_value = "2s", value_parser = crate::units::parse_duration, value_name = "TIME")]
    pub slow_limit: Duration,
    /// A member that does not answer a request within this is failed as on an I/O error
    /// (recorded on the other members, event sent, rebuild onto a spare); without
    /// redundancy left, the request gets EIO.
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration, value_name = "TIME")]
    pub fail_limit: Duration,
    /// On SIGTERM/SIGINT, how long to try to flush before giving up: what was not flushed
    /// is logged and the exit status is 1.
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration, value_name = "TIME")]
    pub shutdown_limit: Duration,
    /// Serve Prometheus metrics (text format) at http://ADDR/metrics: health, member
    /// states and request figures, errors by kind, job progress, and this export's
    /// connections, requests and latency; names prefixed `damocles_`. The daemon takes
    /// this from its config's `[metrics] listen`.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Member files too are read and written with O_DIRECT, past the page cache (block
    /// device members are by default; one that refuses O_DIRECT is used buffered, with a
    /// warning): the array's data is then cached once, by damocles, not a second time by
    /// the kernel. A member file on a file system
    /// that refuses O_DIRECT (ramfs, some FUSE file systems) is an error. Members added
    /// later through the control socket are opened the same way. Daemon: `direct = true`.
    #[arg(long, conflicts_with = "buffered")]
    pub direct: bool,
    /// All member I/O through the page cache, block devices too. Daemon: `direct = false`.
    #[arg(long)]
    pub buffered: bool,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

impl ServeOpts {
    /// When members use O_DIRECT, as --direct and --buffered say.
    pub fn direct_io(&self) -> DirectIo {
        match (self.direct, self.buffered) {
            (true, _) => DirectIo::Always,
            (_, true) => DirectIo::Never,
            _ => DirectIo::Auto,
        }
    }

    /// The options `serve` has when no flag is given (the daemon starts from these).
    pub fn defaults() -> Result<ServeOpts> {
        use clap::{Args, FromArgMatches};
        let cmd = ServeOpts::augment_args(clap::Command::new("serve"));
        let m = cmd.try_get_matches_from(["serve"])?;
        Ok(ServeOpts::from_arg_matches(&m)?)
    }
}

/// Assemble the array on MEMBER... and serve it over NBD.
///
/// Missing members make the array degraded (it says so). A member that fails is marked
/// failed and a hot spare takes over (a rebuild starts by itself; see --rebuild-rate).
/// `damocles status`, `fail`, `add`, `rebuild`, ... reach the server through its control
/// socket (--control). SIGINT or SIGTERM stops accepting clients, lets in-flight requests
/// finish, flushes, and exits 0 (a running rebuild stops at a checkpoint and resumes at the
/// next start).
///
/// Writes acknowledged but not yet flushed are also kept in a write log on tmpfs
/// (/run/damocles/wlog as root when /run is tmpfs, else /dev/shm/damocles-UID;
/// DAMOCLES_WRITE_LOG_DIR=DIR or `off`), so a server killed with SIGKILL loses none of them: the next start replays them
/// before it serves. A power cut may still lose unflushed writes, as NBD allows.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub opts: ServeOpts,
    #[arg(required = true, value_name = "MEMBER")]
    pub members: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    warn_sparse(&a.members);
    let array = members::assemble_opts(
        &a.members,
        AssembleOptions {
            read_only: a.opts.read_only,
            dirty_budget: a.opts.dirty_budget,
            slow_limit: Some(a.opts.slow_limit),
            fail_limit: Some(a.opts.fail_limit),
        },
        a.opts.direct_io(),
    )?;
    serve(Arc::new(array), &a.opts, |_| {})
}

/// Warns when sparse member files could not all be filled on their filesystems: writes
/// there would get ENOSPC.
fn warn_sparse(paths: &[PathBuf]) {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    let mut by_fs: HashMap<u64, (u64, u64, Vec<String>)> = HashMap::new();
    for p in paths {
        let (Ok(Some(holes)), Ok(meta)) =
            (damocles_engine::unallocated_bytes(p), std::fs::metadata(p))
        else {
            continue;
        };
        if holes == 0 {
            continue;
        }
        let Ok(Some(free)) = damocles_engine::filesystem_free(p) else {
            continue;
        };
        let e = by_fs.entry(meta.dev()).or_insert((0, free, Vec::new()));
        e.0 += holes;
        e.2.push(p.display().to_string());
    }
    for (holes, free, names) in by_fs.values() {
        if holes > free {
            eprintln!(
                "warning: sparse members {} need {} more to be filled, but their filesystem has {} \
                 free: writes will get ENOSPC when it fills (the members stay in service)",
                names.join(", "),
                units::human(*holes),
                units::human(*free)
            );
        }
    }
}

fn tcp_addrs(listen: &str, allow_remote: bool, tls: &TlsArgs) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {listen}"))?
        .collect();
    if addrs.is_empty() {
        bail!("--listen {listen}: no address");
    }
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        match tls.mode(&addrs) {
            // Only clients that authenticate get in (TlsArgs::server refuses no credentials).
            TlsMode::Require => {}
            mode if !allow_remote => bail!(
                "--listen {listen}: {} is not a loopback address and TLS is {}; serving plain \
                 NBD beyond this machine needs --allow-remote",
                a.ip(),
                if mode == TlsMode::On {
                    "optional (--tls on)"
                } else {
                    "off"
                }
            ),
            TlsMode::On => eprintln!(
                "warning: serving on {a} with TLS optional: clients that skip it are served \
                 unencrypted and unauthenticated"
            ),
            TlsMode::Off => {
                eprintln!("warning: serving on {a}: NBD traffic is not encrypted or authenticated")
            }
        }
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
    let (export, cfg) = nbd_config(&st, o)?;
    for (warning, line) in health_lines(&st) {
        eprintln!("{}{line}", if warning { "warning: " } else { "note: " });
    }
    let running = start_array(array, o)?;
    let array = running.array.clone();
    // Only accepting and the handshake are async; each connection then serves requests on
    // threads of its own, so one runtime thread is plenty.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let weak = Arc::downgrade(&array);
    // The members already failed when the stop began: any other failed by the end did not
    // answer the final flushes (the NBD server's at disconnect, then close_array's).
    let failed_at_stop = Arc::new(std::sync::Mutex::new(None));
    let at_stop = failed_at_stop.clone();
    let dev: Arc<dyn BlockDevice> = Arc::new(ArrayDevice(array));
    let control_line = running
        .control_path()
        .map(|p| format!("control socket {}", p.display()));
    let stats = o.metrics.as_ref().map(|_| Arc::new(ExportStats::new()));
    // One export per array for now; control commands reach the registry through
    // `Shared::exports` to add or remove others while serving.
    let exports = Exports::single(nbd_export(&cfg, dev, stats.clone()))
        .map_err(|e| anyhow::anyhow!("--export: {e}"))?;
    running.shared.attach_exports(&exports);
    let sources = stats.map(|stats| {
        let key = if st.name.is_empty() {
            st.uuid.clone()
        } else {
            st.name.clone()
        };
        Arc::new(std::sync::Mutex::new(crate::metrics::Sources {
            arrays: vec![crate::metrics::ArraySource {
                key: key.clone(),
                array: Arc::downgrade(&running.array),
                shared: running.shared.clone(),
            }],
            exports: vec![crate::metrics::ExportSource {
                name: export.clone(),
                array: key,
                stats,
            }],
        }))
    });
    let exports_handle = exports.clone();
    let result = rt.block_on(async move {
        let mut cfg = cfg;
        let (listener, uri) = listen(o, &export, &mut cfg).await?;
        let (_metrics_stop, metrics_rx) = tokio::sync::watch::channel(false);
        if let (Some(addr), Some(src)) = (&o.metrics, sources) {
            let bound = crate::metrics::start(addr, src, metrics_rx)
                .await
                .context("--metrics")?;
            println!("metrics at http://{bound}/metrics");
        }
        println!(
            "serving {} '{}' ({}, {}{}) at {uri}",
            st.level,
            export,
            units::human(st.size),
            format!("{:?}", st.health).to_lowercase(),
            if o.read_only { ", read-only" } else { "" }
        );
        if let Some(l) = control_line {
            println!("{l}");
        }
        ready(&uri);
        use std::io::Write;
        std::io::stdout().flush().ok();
        let stop = stop_on_signal(weak, o.shutdown_limit, at_stop);
        let r = damocles_nbd::serve_exports(vec![listener], exports, Arc::new(cfg), stop).await;
        if let Some(p) = &o.socket {
            let _ = std::fs::remove_file(p);
        }
        r.context("NBD server")
    });
    drop(rt);
    // The registry holds the array (its device): let go of it before the array closes.
    running.shared.detach_exports(&exports_handle);
    drop(exports_handle);
    let closed = running.stop(failed_at_stop.lock().map(|mut g| g.take()).unwrap_or(None));
    result?;
    closed?;
    eprintln!("stopped; all writes flushed");
    Ok(())
}

/// An array being served: its control socket, event routing and background threads
/// (flusher, request watch, automatic rebuilds). Shared by `serve` and the daemon.
pub(crate) struct Running {
    pub array: Arc<Array>,
    pub shared: Arc<Shared>,
    control: Option<ControlServer>,
    hook_worker: Option<hook::Worker>,
}

/// Starts serving `array` as `o` says, except NBD: events to the control socket's log and
/// the hook, the control socket, automatic rebuilds, the flusher and the request limits.
pub(crate) fn start_array(array: Arc<Array>, o: &ServeOpts) -> Result<Running> {
    let st = array.status();
    let shared = Shared::new(&array, o.rebuild_rate, o.direct_io());
    let hook_worker = route_events(&array, &shared, o)?;
    let control = start_control(o, &st.uuid, &shared)?;
    // A failed member with a spare (or free space) at start resumes its rebuild now.
    array.set_auto_rebuild(o.rebuild_rate);
    // Buffered writes reach the members within a few seconds even if no client flushes.
    array.spawn_flusher(std::time::Duration::from_secs(5));
    // Member requests are held to the limits: a member that hangs is failed, not waited for.
    array.set_limits(o.slow_limit, o.fail_limit);
    array.spawn_watch();
    Ok(Running {
        array,
        shared,
        control,
        hook_worker,
    })
}

impl Running {
    pub fn control_path(&self) -> Option<&Path> {
        self.control.as_ref().map(|c| c.path())
    }

    /// Closes the control socket, stops the jobs at a checkpoint, flushes and closes the
    /// array, and lets the hook worker finish. Call once no NBD server uses the array.
    /// `failed_at_stop`: the members failed when the stop began (None: those failed now);
    /// any other failed by the end did not answer the final flushes.
    pub fn stop(self, failed_at_stop: Option<Vec<usize>>) -> Result<()> {
        let Running {
            array,
            shared,
            control,
            hook_worker,
        } = self;
        drop(control);
        let closed = close_array(array, &shared, failed_at_stop);
        if let Some(w) = hook_worker {
            w.finish(Duration::from_secs(5));
        }
        closed
    }
}

/// The export name (--export, else the array's name, else "damocles") and the NBD server
/// configuration.
pub(crate) fn nbd_config(st: &Status, o: &ServeOpts) -> Result<(String, ServerConfig)> {
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
    Ok((export, cfg))
}

/// The NBD export of the array `dev` as `cfg` (from [`nbd_config`]) names, describes and
/// flags it, counted in `stats`.
pub(crate) fn nbd_export(
    cfg: &ServerConfig,
    dev: Arc<dyn BlockDevice>,
    stats: Option<Arc<ExportStats>>,
) -> Export {
    Export {
        name: cfg.export_name.clone(),
        description: cfg.description.clone(),
        read_only: cfg.read_only,
        device: dev,
        stats,
    }
}

/// What to warn about at start: a degraded or failed array (`true`), and its notes.
pub(crate) fn health_lines(st: &Status) -> Vec<(bool, String)> {
    let mut v = Vec::new();
    match st.health {
        Health::Ok => {}
        Health::Degraded => {
            let gone: Vec<String> = st
                .members
                .iter()
                .filter(|m| m.state != damocles_engine::MemberHealth::Ok)
                .map(|m| format!("member {} {:?}", m.index, m.state).to_lowercase())
                .collect();
            v.push((
                true,
                format!("array is DEGRADED ({}); serving anyway", gone.join(", ")),
            ));
        }
        Health::Failed => v.push((
            true,
            format!(
                "array has FAILED: more members are missing than {} tolerates; reads of \
                 lost data return errors",
                st.level
            ),
        )),
    }
    for n in &st.notes {
        v.push((false, n.clone()));
    }
    v
}

/// Sends the array's events to the control socket's log and to the --on-event hook (whose
/// worker is returned, to be finished at the end).
fn route_events(
    array: &Arc<Array>,
    shared: &Arc<Shared>,
    o: &ServeOpts,
) -> Result<Option<hook::Worker>> {
    let (hook, hook_worker) = match &o.on_event {
        Some(cmd) => {
            let (h, w) = hook::start(cmd.clone()).context("starting the --on-event worker")?;
            (Some(h), Some(w))
        }
        None => (None, None),
    };
    let shared = shared.clone();
    array.set_event_sink(Arc::new(move |e: &Event| {
        shared.record(e);
        if let Some(h) = &hook {
            h.send(e);
        }
    }));
    Ok(hook_worker)
}

/// Starts the control socket (--control, or the default path for the array's UUID). At the
/// default path a failure only warns; at one asked for, it is an error.
fn start_control(o: &ServeOpts, uuid: &str, shared: &Arc<Shared>) -> Result<Option<ControlServer>> {
    let control_path = match &o.control {
        Some(p) => std::path::absolute(p).with_context(|| format!("--control {}", p.display()))?,
        None => control::default_path(uuid),
    };
    match ControlServer::start(&control_path, shared.clone()) {
        Ok(c) => Ok(Some(c)),
        Err(e) if o.control.is_none() => {
            eprintln!(
                "warning: no control socket ({e:#}); damocles commands cannot reach this \
                 server (--control PATH puts the socket elsewhere)"
            );
            Ok(None)
        }
        Err(e) => Err(e.context("--control")),
    }
}

/// Binds the NBD listener (--socket, else --listen), sets `cfg`'s TLS settings for it, and
/// gives the URI clients connect to.
pub(crate) async fn listen(
    o: &ServeOpts,
    export: &str,
    cfg: &mut ServerConfig,
) -> Result<(Listener, String)> {
    Ok(match &o.socket {
        Some(path) => {
            cfg.tls = o.tls.server(&[])?;
            let scheme = if cfg.tls.is_some() {
                "nbds+unix"
            } else {
                "nbd+unix"
            };
            clear_stale_socket(path)?;
            let l = Listener::bind_unix(path)
                .with_context(|| format!("--socket {}", path.display()))?;
            (l, format!("{scheme}:///{export}?socket={}", path.display()))
        }
        None => {
            let addrs = tcp_addrs(&o.listen, o.allow_remote, &o.tls)?;
            cfg.tls = o.tls.server(&addrs)?;
            let scheme = if cfg.tls.is_some() { "nbds" } else { "nbd" };
            let l = Listener::bind_tcp(&addrs[..])
                .await
                .with_context(|| format!("--listen {}", o.listen))?;
            let a = l.tcp_addr().context("bound address")?;
            let host = match a {
                SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
                SocketAddr::V4(v4) => v4.ip().to_string(),
            };
            (l, format!("{scheme}://{host}:{}/{export}", a.port()))
        }
    })
}

/// A channel that turns true at the first SIGINT or SIGTERM (the NBD server's stop
/// signal). Must be called inside the runtime.
/// Stops on SIGINT/SIGTERM; a stop that has not ended `limit` after the signal (a member
/// that does not answer the final flush) logs what was not flushed and exits 1.
fn stop_on_signal(
    array: std::sync::Weak<Array>,
    limit: Duration,
    failed_at_stop: Arc<std::sync::Mutex<Option<Vec<usize>>>>,
) -> tokio::sync::watch::Receiver<bool> {
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
        if let Some(a) = array.upgrade() {
            if let Ok(mut g) = failed_at_stop.lock() {
                *g = Some(failed_members(&a));
            }
        }
        let _ = tx.send(true);
        let spawned = std::thread::Builder::new()
            .name("damocles-stop".into())
            .spawn(move || {
                std::thread::sleep(limit);
                let dirty = array.upgrade().map(|a| a.dirty_bytes()).unwrap_or(0);
                eprintln!(
                    "error: stopping did not finish within {} s (--shutdown-limit); {dirty} \
                     bytes written by clients were not flushed",
                    limit.as_secs_f64()
                );
                std::process::exit(1);
            });
        if spawned.is_err() {
            eprintln!("warning: no thread to bound the stop");
        }
    });
    rx
}

/// Stops the jobs at a checkpoint and closes the array here (its final commit) rather than
/// wherever the last job thread lets go of it; waits at most [`JOB_STOP_WAIT`] for them.
/// Indexes of the members failed now.
pub(crate) fn failed_members(a: &Array) -> Vec<usize> {
    a.status()
        .members
        .iter()
        .filter(|m| m.state == damocles_engine::MemberHealth::Failed)
        .map(|m| m.index)
        .collect()
}

/// `before`: the members failed when the stop began (None: take them now).
fn close_array(array: Arc<Array>, shared: &Shared, before: Option<Vec<usize>>) -> Result<()> {
    shared.cancel_jobs(&array);
    let start = Instant::now();
    while Arc::strong_count(&array) > 1 && start.elapsed() < JOB_STOP_WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    if Arc::strong_count(&array) > 1 {
        eprintln!(
            "warning: a rebuild or scrub did not reach a checkpoint within {} s; it resumes at \
             the next start",
            JOB_STOP_WAIT.as_secs()
        );
    }
    let before = before.unwrap_or_else(|| failed_members(&array));
    let flushed = if array.is_read_only() {
        Ok(())
    } else {
        array.flush()
    };
    let newly: Vec<usize> = failed_members(&array)
        .into_iter()
        .filter(|i| !before.contains(i))
        .collect();
    drop(array);
    flushed.context("the final flush failed; what was not flushed is replayed from the journal at the next start if it reached it")?;
    if !newly.is_empty() {
        bail!(
            "member{} {newly:?} did not answer the final flush and {} marked failed; the \
             data is flushed on the others",
            if newly.len() > 1 { "s" } else { "" },
            if newly.len() > 1 { "were" } else { "was" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_rebuild_rate_is_the_engines() {
        assert_eq!(
            crate::units::parse_size("200M").unwrap(),
            damocles_engine::DEFAULT_RATE
        );
    }
}
