//! `damocles daemon`: every array of the config file assembled from what the search finds,
//! every export served, scrubs on schedule; SIGHUP re-reads the file.

use super::config::{find_array, plan, ArrayPlan};
use super::serve::{self, Running, ServeOpts};
use crate::blockdev::VolumeDevice;
use crate::config::{self, ArrayConfig, Config, ExportConfig, ListenAddr};
use crate::control::proto::Request;
use crate::control::server::Shared;
use crate::members;
use crate::metrics::{self, ArraySource, ExportSource, Sources};
use crate::notify::Notifier;
use anyhow::{bail, Context, Result};
use damocles_engine::{AssembleOptions, Health};
use damocles_nbd::{BlockDevice, ExportStats, Exports};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Run as the machine's storage service: assemble and serve what the config file says.
///
/// Reads the config file (see docs/config.md), searches for each array's members (its
/// `members` paths and globs, its `scan` paths, or every block device), assembles each
/// array (degraded, with a log line, when members are missing; stale and split members
/// are refused exactly as by `serve`), serves every export on its addresses and runs the
/// scheduled scrubs. Each array has its control socket as under `serve`, so `damocles
/// status --array NAME` and the other commands reach it.
///
/// SIGHUP re-reads the file: new arrays are assembled and new exports start, removed
/// ones stop, unchanged ones keep their connections (a file that does not check out is
/// logged and the running set kept). SIGTERM or SIGINT stops as `serve` does: in-flight
/// requests finish, every array is flushed and closed.
///
/// Under systemd (Type=notify) READY=1 is sent once every array that can be assembled is
/// assembled and every export listens; STATUS= lines give the health, and WATCHDOG=1
/// keep-alives go out at half of WatchdogSec.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles daemon
  damocles daemon --config ./damocles.toml
  damocles --log-format json daemon")]
pub struct Args {
    /// The config file.
    #[arg(long, value_name = "FILE", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// On SIGTERM/SIGINT, how long to try to flush before giving up (exit status 1).
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration, value_name = "TIME")]
    shutdown_limit: Duration,
}

/// An array assembled and served.
struct ArrayRun {
    key: String,
    /// What the config said of it: a change restarts it.
    fingerprint: String,
    opts: ServeOpts,
    running: Running,
    scrub: Option<Duration>,
    scrub_rate: Option<u64>,
    scrub_tried: Option<Instant>,
    /// The members failed when the stop began (set at SIGTERM).
    failed_at_stop: Option<Vec<usize>>,
}

/// An export being served.
struct ExportRun {
    fingerprint: String,
    name: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
    sockets: Vec<PathBuf>,
    /// Its export registry (one export today), attached to its array's control socket.
    registry: Exports,
    shared: Arc<Shared>,
}

struct Daemon {
    file: PathBuf,
    arrays: Vec<ArrayRun>,
    exports: Vec<ExportRun>,
    /// Arrays that could not be assembled, with why.
    missing: Vec<(String, String)>,
    sources: Arc<Mutex<Sources>>,
    notify: Notifier,
    metrics: Option<(String, watch::Sender<bool>)>,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = config::load(&a.config)?;
    let p = plan(&cfg);
    print!("{}", p.text(&cfg));
    flush_stdout();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut d = Daemon {
        file: a.config.clone(),
        arrays: Vec::new(),
        exports: Vec::new(),
        missing: Vec::new(),
        sources: Arc::new(Mutex::new(Sources::default())),
        notify: Notifier::from_env(),
        metrics: None,
    };
    let started = rt.block_on(async {
        for (ap, ac) in p.arrays.into_iter().zip(&cfg.array) {
            d.start_array(&cfg, ac, Some(ap)).await;
        }
        for e in &cfg.export {
            d.start_export(&cfg, e).await?;
        }
        d.start_metrics(&cfg).await
    });
    if let Err(e) = started {
        d.notify.send("STOPPING=1");
        rt.block_on(d.stop_exports(|_| true));
        let _ = d.close_arrays(|_| true);
        return Err(e);
    }
    d.sync_sources();
    d.notify
        .send(&format!("READY=1\nSTATUS={}", d.status_line()));
    info!("ready: {}", d.status_line());
    let limit = a.shutdown_limit;
    let r = rt.block_on(d.main_loop());
    bound_stop(limit);
    // Any member failed from here on did not answer the final flushes.
    for a in &mut d.arrays {
        a.failed_at_stop = Some(serve::failed_members(&a.running.array));
    }
    d.notify.send("STOPPING=1");
    rt.block_on(d.stop_exports(|_| true));
    if let Some((_, tx)) = d.metrics.take() {
        let _ = tx.send(true);
    }
    drop(rt);
    let closed = d.close_arrays(|_| true);
    r?;
    closed?;
    eprintln!("stopped; all writes flushed");
    Ok(())
}

fn flush_stdout() {
    use std::io::Write;
    std::io::stdout().flush().ok();
}

/// Exits 1 when the stop has not ended `limit` from now (a member that never answers the
/// final flush), as `serve --shutdown-limit` does.
fn bound_stop(limit: Duration) {
    let _ = std::thread::Builder::new()
        .name("damocles-stop".into())
        .spawn(move || {
            std::thread::sleep(limit);
            error!(
                "stopping did not finish within {} s (--shutdown-limit)",
                limit.as_secs_f64()
            );
            std::process::exit(1);
        });
}

/// What the config says of an array that needs it reassembled to change (the scrub
/// schedule and rate change in place).
fn array_fingerprint(cfg: &Config, a: &ArrayConfig) -> String {
    let s = a.settings(cfg);
    format!(
        "{:?} {:?} {:?} {:?} {} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        a.name.as_ref().map(|n| n.get_ref()),
        a.uuid.as_ref().map(|u| u.get_ref()),
        a.members,
        a.scan,
        a.read_only,
        s.on_event,
        s.rebuild_rate,
        s.slow_limit,
        s.fail_limit,
        s.dirty_budget,
        s.direct,
        cfg.control_dir
    )
}

fn export_fingerprint(cfg: &Config, e: &ExportConfig) -> Option<String> {
    let a = cfg.array.iter().find(|a| a.matches(e.array.get_ref()))?;
    Some(format!(
        "{} | {:?} {:?} {} {} {:?}",
        array_fingerprint(cfg, a),
        e.name,
        e.addrs(),
        e.read_only,
        e.allow_remote,
        e.tls_args()
    ))
}

/// `serve`'s options for an array as the config sets it.
fn array_opts(cfg: &Config, a: &ArrayConfig) -> Result<ServeOpts> {
    let mut o = ServeOpts::defaults()?;
    let s = a.settings(cfg);
    o.on_event = s.on_event;
    if let Some(r) = s.rebuild_rate {
        o.rebuild_rate = r;
    }
    if let Some(l) = s.slow_limit {
        o.slow_limit = l;
    }
    if let Some(l) = s.fail_limit {
        o.fail_limit = l;
    }
    o.dirty_budget = s.dirty_budget;
    o.direct = s.direct == Some(true);
    o.buffered = s.direct == Some(false);
    o.read_only = a.read_only;
    Ok(o)
}

/// `serve`'s options for one address of an export (what `serve::listen` binds).
fn export_opts(base: &ServeOpts, e: &ExportConfig, key: &str, addr: &ListenAddr) -> ServeOpts {
    let mut o = base.clone();
    o.export = Some(e.name.clone().unwrap_or_else(|| key.to_string()));
    o.read_only = base.read_only || e.read_only;
    o.allow_remote = e.allow_remote;
    o.tls = e.tls_args();
    // One mode for all of the export's addresses: the one `serve` would pick for all of
    // them together (require when any is not loopback), not one per address.
    o.tls.tls = Some(o.tls.mode(&e.tcp_addrs()));
    match addr {
        ListenAddr::Tcp(a) => {
            o.listen = a.clone();
            o.socket = None;
        }
        ListenAddr::Unix(p) => o.socket = Some(p.clone()),
    }
    o
}

impl Daemon {
    /// Assembles and starts one array; one that cannot be is logged and left out.
    async fn start_array(&mut self, cfg: &Config, a: &ArrayConfig, found: Option<ArrayPlan>) {
        let key = a.key().to_string();
        let r = self.try_start_array(cfg, a, found).await;
        match r {
            Ok(run) => self.arrays.push(run),
            Err(e) => {
                error!(array = %key, "not assembled: {e:#}");
                self.missing.push((key, format!("{e:#}")));
            }
        }
    }

    async fn try_start_array(
        &mut self,
        cfg: &Config,
        a: &ArrayConfig,
        found: Option<ArrayPlan>,
    ) -> Result<ArrayRun> {
        let key = a.key().to_string();
        let found = match found {
            Some(p) => p.found,
            None => {
                let a2 = a.clone();
                tokio::task::spawn_blocking(move || find_array(&a2)).await?
            }
        };
        let found = found.map_err(anyhow::Error::msg)?;
        let mut opts = array_opts(cfg, a)?;
        if let Some(dir) = &cfg.control_dir {
            opts.control = Some(dir.join(format!("{}.sock", found.uuid)));
        }
        let paths = found.paths();
        let ao = AssembleOptions {
            read_only: opts.read_only,
            dirty_budget: opts.dirty_budget,
            slow_limit: Some(opts.slow_limit),
            fail_limit: Some(opts.fail_limit),
        };
        let direct = opts.direct_io();
        let array = tokio::task::spawn_blocking(move || members::assemble_opts(&paths, ao, direct))
            .await?
            .context("assembling")?;
        let array = Arc::new(array);
        let st = array.status();
        for (warning, line) in serve::health_lines(&st) {
            if warning {
                warn!(array = %key, "{line}");
            } else {
                info!(array = %key, "{line}");
            }
        }
        let running = serve::start_array(array, &opts)?;
        info!(
            array = %key,
            uuid = %st.uuid,
            health = %format!("{:?}", st.health).to_lowercase(),
            "assembled {} on {} members{}",
            st.level,
            st.members.len(),
            running
                .control_path()
                .map(|p| format!("; control socket {}", p.display()))
                .unwrap_or_default()
        );
        let s = a.settings(cfg);
        Ok(ArrayRun {
            key,
            fingerprint: array_fingerprint(cfg, a),
            opts,
            running,
            scrub: s.scrub,
            scrub_rate: s.scrub_rate,
            scrub_tried: None,
            failed_at_stop: None,
        })
    }

    /// Binds every address of the export and serves it; a bind that fails is an error.
    /// An export of an array that is not assembled is logged and left out.
    async fn start_export(&mut self, cfg: &Config, e: &ExportConfig) -> Result<()> {
        let Some(fp) = export_fingerprint(cfg, e) else {
            return Ok(());
        };
        let Some(ac) = cfg.array.iter().find(|a| a.matches(e.array.get_ref())) else {
            return Ok(());
        };
        let afp = array_fingerprint(cfg, ac);
        let Some(run) = self.arrays.iter().find(|r| r.fingerprint == afp) else {
            warn!(
                array = %ac.key(),
                "{}: not served, the array is not assembled",
                super::config::describe_export(e, ac.key())
            );
            return Ok(());
        };
        let st = run.running.array.status();
        // The volume named, or the array's only one.
        let volume = match &e.volume {
            Some(v) => run.running.array.volume_named(v.get_ref())?,
            None => {
                let only = VolumeDevice::only(run.running.array.clone())?;
                run.running
                    .array
                    .volume_by_id(only.id)
                    .context("the volume was deleted meanwhile")?
            }
        };
        let mut listeners = Vec::new();
        let mut uris = Vec::new();
        let mut sockets = Vec::new();
        let mut nbd = None;
        for addr in e.addrs() {
            let mut o = export_opts(&run.opts, e, &run.key, &addr);
            if e.name.is_none() && e.volume.is_some() {
                o.export = Some(volume.name.clone());
            }
            // Every address of an export gets the same TLS settings (export_opts), so the
            // configuration the last one fills in serves them all.
            let (name, mut c) = serve::nbd_config(&st, &o)?;
            let (l, uri) = serve::listen(&o, &name, &mut c)
                .await
                .with_context(|| format!("export '{name}' at {addr}"))?;
            if let Some(p) = o.socket {
                sockets.push(p);
            }
            listeners.push(l);
            uris.push(uri);
            nbd = Some((name, c));
        }
        let Some((name, c)) = nbd else {
            bail!("export of array '{}' has no address", run.key);
        };
        let stats = Arc::new(ExportStats::new());
        let (stop, rx) = watch::channel(false);
        let dev: Arc<dyn BlockDevice> =
            Arc::new(VolumeDevice::new(run.running.array.clone(), &volume));
        let registry = Exports::single(serve::nbd_export(&c, dev, Some(stats.clone())))
            .with_context(|| format!("export '{name}'"))?;
        run.running.shared.attach_exports(&registry);
        let exports = registry.clone();
        let task = tokio::spawn(async move {
            damocles_nbd::serve_exports(listeners, exports, Arc::new(c), rx)
                .await
                .context("NBD server")
        });
        println!(
            "serving export '{name}' of array '{}' at {}",
            run.key,
            uris.join(" ")
        );
        flush_stdout();
        info!(array = %run.key, export = %name, "serving at {}", uris.join(" "));
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .exports
            .push(ExportSource {
                name: name.clone(),
                array: run.key.clone(),
                stats,
            });
        self.exports.push(ExportRun {
            fingerprint: fp,
            name,
            stop,
            task,
            sockets,
            registry,
            shared: run.running.shared.clone(),
        });
        Ok(())
    }

    async fn start_metrics(&mut self, cfg: &Config) -> Result<()> {
        let Some(m) = &cfg.metrics else {
            return Ok(());
        };
        if self.metrics.as_ref().is_some_and(|(l, _)| *l == m.listen) {
            return Ok(());
        }
        if let Some((_, tx)) = self.metrics.take() {
            let _ = tx.send(true);
        }
        let (tx, rx) = watch::channel(false);
        let addr = metrics::start(&m.listen, self.sources.clone(), rx).await?;
        info!("metrics at http://{addr}/metrics");
        self.metrics = Some((m.listen.clone(), tx));
        Ok(())
    }

    /// Stops the exports `which` picks and waits for them.
    async fn stop_exports(&mut self, which: impl Fn(&ExportRun) -> bool) {
        let (stop, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.exports)
            .into_iter()
            .partition(|e| which(e));
        self.exports = keep;
        for e in &stop {
            let _ = e.stop.send(true);
        }
        for e in stop {
            match e.task.await {
                Ok(Ok(())) => info!(export = %e.name, "export stopped"),
                Ok(Err(err)) => error!(export = %e.name, "export stopped: {err:#}"),
                Err(err) => error!(export = %e.name, "export task failed: {err}"),
            }
            e.shared.detach_exports(&e.registry);
            for s in &e.sockets {
                let _ = std::fs::remove_file(s);
            }
            self.sources
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .exports
                .retain(|x| x.name != e.name);
        }
    }

    /// Closes the arrays `which` picks (their exports must be stopped first).
    fn close_arrays(&mut self, which: impl Fn(&ArrayRun) -> bool) -> Result<()> {
        let (stop, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.arrays)
            .into_iter()
            .partition(|a| which(a));
        self.arrays = keep;
        self.sync_sources();
        let mut first = Ok(());
        for a in stop {
            let key = a.key.clone();
            match a.running.stop(a.failed_at_stop) {
                Ok(()) => info!(array = %key, "closed; all writes flushed"),
                Err(e) => {
                    error!(array = %key, "closing: {e:#}");
                    if first.is_ok() {
                        first = Err(e.context(format!("array '{key}'")));
                    }
                }
            }
        }
        first
    }

    fn sync_sources(&self) {
        let mut s = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        s.arrays = self
            .arrays
            .iter()
            .map(|a| ArraySource {
                key: a.key.clone(),
                array: Arc::downgrade(&a.running.array),
                shared: a.running.shared.clone(),
            })
            .collect();
    }

    /// One line of health for STATUS= and the log.
    fn status_line(&self) -> String {
        let mut parts: Vec<String> = self
            .arrays
            .iter()
            .map(|a| {
                let h = a.running.array.status().health;
                format!("{} {}", a.key, format!("{h:?}").to_lowercase())
            })
            .collect();
        parts.extend(
            self.missing
                .iter()
                .map(|(k, _)| format!("{k} not assembled")),
        );
        format!(
            "{} array{}: {}; {} export{}",
            self.arrays.len() + self.missing.len(),
            if self.arrays.len() + self.missing.len() == 1 {
                ""
            } else {
                "s"
            },
            if parts.is_empty() {
                "none".into()
            } else {
                parts.join(", ")
            },
            self.exports.len(),
            if self.exports.len() == 1 { "" } else { "s" },
        )
    }

    async fn main_loop(&mut self) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt()).context("SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("SIGTERM")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP")?;
        let watchdog = Notifier::watchdog_interval();
        let mut tick = tokio::time::interval(tick_interval(watchdog, &self.arrays));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    self.reload().await;
                    tick = tokio::time::interval(tick_interval(watchdog, &self.arrays));
                }
                _ = tick.tick() => {
                    self.scheduled_scrubs();
                    let mut msg = format!("STATUS={}", self.status_line());
                    if watchdog.is_some() {
                        msg = format!("WATCHDOG=1\n{msg}");
                    }
                    self.notify.send(&msg);
                }
            }
        }
        info!("stopping: finishing in-flight requests and flushing");
        Ok(())
    }

    /// Starts the scrubs that are due: an array whose last scrub finished longer ago than
    /// its schedule, that is whole and runs no scrub or rebuild.
    fn scheduled_scrubs(&mut self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for a in &mut self.arrays {
            let Some(every) = a.scrub else {
                continue;
            };
            let st = a.running.array.status();
            let due = now.saturating_sub(st.scrub.last_finished) >= every.as_secs();
            let busy = st.scrub.running.is_some()
                || st.rebuild.as_ref().is_some_and(|r| r.running)
                || st.reshape.as_ref().is_some_and(|r| r.running);
            let retried = a.scrub_tried.is_some_and(|t| t.elapsed() < every);
            if !due || busy || retried || st.health != Health::Ok || a.opts.read_only {
                continue;
            }
            a.scrub_tried = Some(Instant::now());
            let shared = a.running.shared.clone();
            let (key, rate) = (a.key.clone(), a.scrub_rate);
            // The request waits up to 2 s to see the job start: off the runtime thread.
            std::thread::spawn(move || {
                let r = shared.handle(Request::Scrub { rate });
                if r.ok {
                    info!(array = %key, "scheduled scrub started");
                } else {
                    warn!(array = %key, "scheduled scrub: {}", r.error.unwrap_or_default());
                }
            });
        }
    }

    /// SIGHUP: re-reads the file; starts what is new, stops what is gone, keeps the rest.
    async fn reload(&mut self) {
        info!("SIGHUP: reloading {}", self.file.display());
        let cfg = match config::load(&self.file) {
            Ok(c) => c,
            Err(e) => {
                error!("reload refused, keeping the running configuration: {e:#}");
                return;
            }
        };
        let want_exports: Vec<String> = cfg
            .export
            .iter()
            .filter_map(|e| export_fingerprint(&cfg, e))
            .collect();
        let want_arrays: Vec<String> = cfg
            .array
            .iter()
            .map(|a| array_fingerprint(&cfg, a))
            .collect();
        self.stop_exports(|e| !want_exports.contains(&e.fingerprint))
            .await;
        let gone: Vec<String> = self
            .arrays
            .iter()
            .filter(|a| !want_arrays.contains(&a.fingerprint))
            .map(|a| a.fingerprint.clone())
            .collect();
        if !gone.is_empty() {
            // Closing waits for jobs to reach a checkpoint: off the runtime thread.
            let mut picked: Vec<ArrayRun> = Vec::new();
            let all = std::mem::take(&mut self.arrays);
            for a in all {
                if gone.contains(&a.fingerprint) {
                    picked.push(a);
                } else {
                    self.arrays.push(a);
                }
            }
            self.sync_sources();
            let _ = tokio::task::spawn_blocking(move || {
                for a in picked {
                    let key = a.key.clone();
                    match a.running.stop(None) {
                        Ok(()) => info!(array = %key, "removed from the config: closed"),
                        Err(e) => error!(array = %key, "closing: {e:#}"),
                    }
                }
            })
            .await;
        }
        self.missing.clear();
        for a in &cfg.array {
            let fp = array_fingerprint(&cfg, a);
            match self.arrays.iter_mut().find(|r| r.fingerprint == fp) {
                Some(run) => {
                    let s = a.settings(&cfg);
                    if (run.scrub, run.scrub_rate) != (s.scrub, s.scrub_rate) {
                        info!(array = %run.key, "scrub schedule now {:?}", s.scrub);
                    }
                    (run.scrub, run.scrub_rate) = (s.scrub, s.scrub_rate);
                }
                None => self.start_array(&cfg, a, None).await,
            }
        }
        self.sync_sources();
        for e in &cfg.export {
            let Some(fp) = export_fingerprint(&cfg, e) else {
                continue;
            };
            if self.exports.iter().any(|x| x.fingerprint == fp) {
                continue;
            }
            if let Err(err) = self.start_export(&cfg, e).await {
                error!(array = %e.array.get_ref(), "export not started: {err:#}");
            }
        }
        if let Err(e) = self.start_metrics(&cfg).await {
            error!("metrics: {e:#}");
        }
        info!("reloaded: {}", self.status_line());
        self.notify.send(&format!("STATUS={}", self.status_line()));
    }
}

/// How often the loop wakes: for the watchdog, the scrub schedule and STATUS=.
fn tick_interval(watchdog: Option<Duration>, arrays: &[ArrayRun]) -> Duration {
    let mut t = Duration::from_secs(10);
    if let Some(w) = watchdog {
        t = t.min(w);
    }
    for a in arrays {
        if let Some(s) = a.scrub {
            t = t.min((s / 4).max(Duration::from_secs(1)));
        }
    }
    t.max(Duration::from_millis(100))
}
