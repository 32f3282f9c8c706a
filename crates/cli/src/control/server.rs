//! The server side of the control socket, run by `damocles serve`.

use super::proto::{ChangeSpec, JobKind, JobState, Request, Response, MAX_LINE, PROTOCOL};
use crate::{members, units};
use anyhow::{bail, Context, Result};
use damocles_engine::{
    Array, Change, DirectIo, Event, EventKind, JobControl, Level, MemberHealth, OpenMode,
};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Events kept for `damocles rebuild --watch` and friends.
const EVENT_LOG: usize = 256;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// What the control connections share with the server.
pub struct Shared {
    /// Weak, so that a lingering connection never keeps the array (and its final commit
    /// on close) alive after the server stops.
    array: Weak<Array>,
    rebuild_rate: u64,
    events: Mutex<EventLog>,
    /// How the last run of each job ended, in words, and whether it failed.
    last: Mutex<[Option<(String, bool)>; 3]>,
    /// A scrub this server started and that has not returned yet.
    scrub: Mutex<Option<Arc<JobControl>>>,
    connections: AtomicUsize,
    /// Where the control socket listens (shown in `status`).
    socket: Mutex<Option<String>>,
    /// How members added through the socket are opened (as the array's own were).
    direct: DirectIo,
    /// The NBD export registries serving this array (`serve`: one; the daemon: one per
    /// configured export): control commands add and remove exports through them.
    nbd: Mutex<Vec<damocles_nbd::Exports>>,
}

struct EventLog {
    next: u64,
    items: VecDeque<serde_json::Value>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking connection thread must not take the others down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn new(array: &Arc<Array>, rebuild_rate: u64, direct: DirectIo) -> Arc<Shared> {
        Arc::new(Shared {
            array: Arc::downgrade(array),
            rebuild_rate,
            events: Mutex::new(EventLog {
                next: 1,
                items: VecDeque::new(),
            }),
            last: Mutex::new([None, None, None]),
            scrub: Mutex::new(None),
            connections: AtomicUsize::new(0),
            socket: Mutex::new(None),
            direct,
            nbd: Mutex::new(Vec::new()),
        })
    }

    /// `exports` serves this array (until [`Shared::detach_exports`]).
    pub fn attach_exports(&self, exports: &damocles_nbd::Exports) {
        lock(&self.nbd).push(exports.clone());
    }

    /// `exports` no longer serves this array (its NBD server stopped).
    pub fn detach_exports(&self, exports: &damocles_nbd::Exports) {
        lock(&self.nbd).retain(|e| !e.same(exports));
    }

    /// The registries serving this array now: adding an export to one serves it at
    /// once on that server's addresses, removing one stops it.
    pub fn exports(&self) -> Vec<damocles_nbd::Exports> {
        lock(&self.nbd).clone()
    }

    /// Called from the array's event sink: must be quick and never block on I/O.
    pub fn record(&self, e: &Event) {
        let Ok(mut v) = serde_json::to_value(e) else {
            return;
        };
        match e.event {
            EventKind::RebuildFinished => self.set_last(JobKind::Rebuild, e.message.clone(), false),
            EventKind::ScrubFinished => self.set_last(JobKind::Scrub, e.message.clone(), false),
            EventKind::ReshapeFinished => self.set_last(JobKind::Reshape, e.message.clone(), false),
            _ => {}
        }
        let mut log = lock(&self.events);
        v["seq"] = log.next.into();
        log.next += 1;
        log.items.push_back(v);
        if log.items.len() > EVENT_LOG {
            log.items.pop_front();
        }
    }

    fn set_last(&self, job: JobKind, msg: String, failed: bool) {
        lock(&self.last)[job as usize] = Some((msg, failed));
    }

    pub fn handle(self: &Arc<Self>, req: Request) -> Response {
        let Some(array) = self.array.upgrade() else {
            return Response::error("the server is stopping");
        };
        match self.dispatch(&array, req) {
            Ok(r) => r,
            Err(e) => Response::error(format!("{e:#}")),
        }
    }

    fn dispatch(self: &Arc<Self>, array: &Arc<Array>, req: Request) -> Result<Response> {
        Ok(match req {
            Request::Rebuild { rate } => self.start(array, JobKind::Rebuild, rate)?,
            Request::Scrub { rate } => self.start(array, JobKind::Scrub, rate)?,
            Request::Reshape {
                change,
                force,
                dry_run,
                rate,
            } => {
                let ch = to_change(array, &change)?;
                if dry_run {
                    return Ok(Response {
                        forecast: Some(serde_json::to_value(array.forecast(&ch)?)?),
                        ..Response::ok()
                    });
                }
                let f = array.start_reshape(&ch, force)?;
                // The array may have started the reshape by itself at once, or one already
                // running took the new goal: either way it is this request's reshape.
                let started = match self.running(array, JobKind::Reshape) {
                    Some(ctl) => {
                        if let Some(r) = rate {
                            ctl.set_rate_limit(r);
                        }
                        Response {
                            job: Some(self.job_state(array, JobKind::Reshape)),
                            ..Response::ok().with_message("the reshape is running")
                        }
                    }
                    None => self.start(array, JobKind::Reshape, rate)?,
                };
                Response {
                    forecast: Some(serde_json::to_value(f)?),
                    ..started
                }
            }
            Request::Job { job } => Response {
                job: Some(self.job_state(array, job)),
                ..Response::ok()
            },
            Request::Cancel { job } => match self.running(array, job) {
                Some(ctl) => {
                    ctl.cancel();
                    Response::ok()
                        .with_message(format!("{} stops at its next checkpoint", job.name()))
                }
                None => bail!("no {} is running", job.name()),
            },
            Request::Events { after } => {
                let log = lock(&self.events);
                let events: Vec<serde_json::Value> = log
                    .items
                    .iter()
                    .filter(|e| e["seq"].as_u64().is_some_and(|s| s > after))
                    .cloned()
                    .collect();
                Response {
                    events: Some(events),
                    next: Some(log.next - 1),
                    ..Response::ok()
                }
            }
            Request::Volume { op } => super::volume::apply_served(array, op, &self.exports())?,
            Request::Status {} => {
                let mut st = array.status();
                st.control_socket = lock(&self.socket).clone();
                let mut v = serde_json::to_value(st)?;
                v["nbd_exports"] = super::exports_json(&self.exports());
                Response {
                    status: Some(v),
                    ..Response::ok()
                }
            }
            other => apply_with(array, other, self.direct)?,
        })
    }

    /// Asks running jobs to stop at their next checkpoint (the server is stopping).
    pub fn cancel_jobs(&self, array: &Array) {
        for job in [JobKind::Rebuild, JobKind::Scrub, JobKind::Reshape] {
            if let Some(c) = self.running(array, job) {
                c.cancel();
            }
        }
    }

    fn running(&self, array: &Array, job: JobKind) -> Option<Arc<JobControl>> {
        match job {
            JobKind::Rebuild => array.rebuild_job(),
            JobKind::Scrub => array.scrub_job().or_else(|| lock(&self.scrub).clone()),
            JobKind::Reshape => array.reshape_job(),
        }
    }

    /// The job's state now, as `damocles rebuild --watch` sees it (none: the server is
    /// stopping). For the metrics endpoint.
    pub fn job(&self, job: JobKind) -> Option<JobState> {
        let array = self.array.upgrade()?;
        Some(self.job_state(&array, job))
    }

    fn job_state(&self, array: &Array, job: JobKind) -> JobState {
        let ctl = self.running(array, job);
        let last = lock(&self.last)[job as usize].clone();
        JobState {
            running: ctl.is_some(),
            progress: ctl.map(|c| c.progress()),
            last_failed: last.as_ref().is_some_and(|(_, f)| *f),
            last: last.map(|(m, _)| m),
        }
    }

    /// Starts a job on its own thread, or retunes the one running.
    fn start(
        self: &Arc<Self>,
        array: &Arc<Array>,
        job: JobKind,
        rate: Option<u64>,
    ) -> Result<Response> {
        if let Some(ctl) = self.running(array, job) {
            let mut msg = format!("a {} is already running", job.name());
            if let Some(r) = rate {
                ctl.set_rate_limit(r);
                msg += &format!("; rate limit now {}", rate_text(r));
            }
            return Ok(Response {
                job: Some(self.job_state(array, job)),
                ..Response::ok().with_message(msg)
            });
        }
        let default = match job {
            JobKind::Rebuild | JobKind::Reshape => self.rebuild_rate,
            JobKind::Scrub => damocles_engine::DEFAULT_RATE,
        };
        let ctl = Arc::new(JobControl::new(rate.unwrap_or(default)));
        if job == JobKind::Scrub {
            *lock(&self.scrub) = Some(ctl.clone());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (me, a, c) = (self.clone(), array.clone(), ctl.clone());
        std::thread::Builder::new()
            .name(format!("damocles-{}", job.name()))
            .spawn(move || {
                let _ = tx.send(me.run_job(&a, c, job, rate));
            })
            .context("starting a thread")?;
        self.answer_when_started(array, job, &ctl, &rx, rate.unwrap_or(default))
    }

    /// Runs `job` to its end on this thread and records how it ended. When the array
    /// started the same job by itself a moment before, that one runs (retuned to `rate`)
    /// and nothing is recorded.
    fn run_job(
        &self,
        a: &Array,
        c: Arc<JobControl>,
        job: JobKind,
        rate: Option<u64>,
    ) -> Result<String, String> {
        let outcome = match job {
            // Lost a race with a rebuild the array started by itself: that one runs.
            JobKind::Rebuild => match a.rebuild(c) {
                Err(_) if a.rebuild_job().is_some() => {
                    if let (Some(r), Some(j)) = (rate, a.rebuild_job()) {
                        j.set_rate_limit(r);
                    }
                    return Ok("a rebuild is already running".into());
                }
                r => r.map(|r| describe_rebuild(&r)),
            },
            JobKind::Scrub => {
                let r = a.scrub(c).map(|r| describe_scrub(&r));
                *lock(&self.scrub) = None;
                r
            }
            // The array may have started it by itself a moment ago.
            JobKind::Reshape => match a.reshape(c) {
                Err(_) if a.reshape_job().is_some() => {
                    if let (Some(r), Some(j)) = (rate, a.reshape_job()) {
                        j.set_rate_limit(r);
                    }
                    return Ok("the reshape is running".into());
                }
                r => r.map(|p| describe_reshape(&p)),
            },
        };
        let outcome = outcome.map_err(|e| format!("{} failed: {e}", job.name()));
        if let Err(e) = &outcome {
            tracing::error!("{e}");
        }
        match &outcome {
            Ok(m) => self.set_last(job, m.clone(), false),
            Err(e) => self.set_last(job, e.clone(), true),
        }
        outcome
    }

    /// Answers a request that started the job `ctl` once the job is visible (or over), so
    /// a watcher's first poll sees it; waits at most 2 s. `rate` is its rate limit.
    fn answer_when_started(
        &self,
        array: &Array,
        job: JobKind,
        ctl: &Arc<JobControl>,
        rx: &std::sync::mpsc::Receiver<Result<String, String>>,
        rate: u64,
    ) -> Result<Response> {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(2);
        loop {
            if let Ok(outcome) = rx.try_recv() {
                return match outcome {
                    Ok(msg) => Ok(Response {
                        job: Some(self.job_state(array, job)),
                        ..Response::ok().with_message(msg)
                    }),
                    Err(e) => bail!(e),
                };
            }
            // The short minimum catches a job that fails at once (a refused request).
            let visible = self
                .running(array, job)
                .is_some_and(|r| Arc::ptr_eq(&r, ctl));
            if (visible && started.elapsed() > Duration::from_millis(100))
                || Instant::now() > deadline
            {
                return Ok(Response {
                    job: Some(self.job_state(array, job)),
                    ..Response::ok().with_message(format!(
                        "{} started (rate limit {})",
                        job.name(),
                        rate_text(rate)
                    ))
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Requests that change membership or only read, on an open array: the server's and the
/// offline commands' common path.
pub fn apply(array: &Array, req: Request) -> Result<Response> {
    apply_with(array, req, DirectIo::Auto)
}

/// [`apply`], opening new members with `O_DIRECT` as `direct` says.
pub fn apply_with(array: &Array, req: Request, direct: DirectIo) -> Result<Response> {
    Ok(match req {
        Request::Hello {} => {
            let st = array.status();
            Response {
                name: Some(st.name),
                uuid: Some(st.uuid),
                protocol: Some(PROTOCOL),
                pid: Some(std::process::id()),
                ..Response::ok()
            }
        }
        Request::Status {} => Response {
            status: Some(serde_json::to_value(array.status())?),
            ..Response::ok()
        },
        Request::Fail { member, force } => {
            let i = array.find_member(&member)?;
            let name = member_name(array, i);
            array.fail_member(i, "failed by request (damocles fail)", force)?;
            Response {
                member: Some(i),
                ..Response::ok().with_message(format!("member {i}{name} marked failed"))
            }
        }
        Request::Remove { member } => {
            let i = array.find_member(&member)?;
            let name = member_name(array, i);
            let m = &array.status().members[i];
            if m.state == MemberHealth::Ok && m.used > 0 {
                // A working member with data: move the data off first (a reshape).
                let change = Change {
                    remove: vec![i],
                    ..Default::default()
                };
                return reshape_started(array, &change, i, |f| {
                    format!("member {i}{name} is leaving: {} chunk moves take its data to the others, then it is removed", f.plan.moves)
                });
            }
            array.remove_member(i)?;
            Response {
                member: Some(i),
                ..Response::ok().with_message(format!("member {i}{name} removed"))
            }
        }
        Request::Add {
            device,
            force,
            grow,
        } => {
            let dev = open_device(array, &device, direct)?;
            if grow {
                let i = array.add_member_grow(dev, force)?;
                let change = Change {
                    balance: true,
                    grow: true,
                    ..Default::default()
                };
                return reshape_started(array, &change, i, |f| {
                    format!(
                        "{device} added as member {i}; balancing spreads data over it ({} chunk moves), then the volume grows from {} to {}",
                        f.plan.moves,
                        units::human(f.size),
                        units::human(f.size_after)
                    )
                });
            }
            let i = array.add_member(dev, force)?;
            Response {
                member: Some(i),
                ..Response::ok().with_message(format!("{device} added as hot spare (member {i})"))
            }
        }
        Request::Replace { old, new, force } => {
            let o = array.find_member(&old)?;
            let name = member_name(array, o);
            let dev = open_device(array, &new, direct)?;
            let i = array.replace_member(o, dev, force)?;
            Response {
                member: Some(i),
                ..Response::ok().with_message(format!(
                    "{new} added as member {i}, to replace member {o}{name}"
                ))
            }
        }
        Request::Grow { size, dry_run } => {
            let f = if dry_run {
                array.grow_forecast(size)?
            } else {
                array.grow(size)?
            };
            Response {
                grow: Some(f),
                ..Response::ok()
            }
        }
        Request::Volume { op } => super::volume::apply_volume(array, op)?,
        Request::RepairLabels { dry_run, force } => Response {
            labels: Some(array.repair_labels(dry_run, force)?),
            ..Response::ok()
        },
        other => bail!("{other:?} needs a served array"),
    })
}

/// Starts the reshape a membership change needs, and says so (`say` gets the forecast).
fn reshape_started(
    array: &Array,
    change: &Change,
    member: usize,
    say: impl FnOnce(&damocles_engine::Forecast) -> String,
) -> Result<Response> {
    let f = array.start_reshape(change, false)?;
    Ok(Response {
        member: Some(member),
        forecast: Some(serde_json::to_value(&f)?),
        ..Response::ok().with_message(say(&f))
    })
}

/// " (/dev/sdb)", or "" for a member without a device.
fn member_name(array: &Array, i: usize) -> String {
    array
        .status()
        .members
        .get(i)
        .and_then(|m| m.device.clone())
        .map_or(String::new(), |d| format!(" ({d})"))
}

/// Opens a new member read-write, refusing one of the array's own members by name (opening
/// it would only fail on its lock, with a misleading message).
fn open_device(array: &Array, path: &str, direct: DirectIo) -> Result<damocles_engine::Dev> {
    let p = Path::new(path);
    if !p.is_absolute() {
        bail!("{path}: the server needs an absolute path");
    }
    if let Ok(want) = std::fs::canonicalize(p) {
        for m in array.status().members {
            let same = m
                .device
                .as_ref()
                .and_then(|d| std::fs::canonicalize(d).ok())
                .is_some_and(|d| d == want);
            if same {
                bail!("{path} is already member {} of this array", m.index);
            }
        }
    }
    let mut devs = members::open_with(&[p.to_path_buf()], OpenMode::ReadWrite, direct)?;
    Ok(devs.remove(0))
}

pub fn rate_text(r: u64) -> String {
    if r == 0 {
        "none".into()
    } else {
        format!("{}/s", units::human(r))
    }
}

pub fn describe_rebuild(r: &damocles_engine::RebuildReport) -> String {
    if r.chunks_rebuilt == 0 && r.chunks_stuck == 0 && r.lost.is_empty() {
        return "nothing to rebuild".into();
    }
    let mut s = format!(
        "rebuilt {} chunk{} ({})",
        r.chunks_rebuilt,
        if r.chunks_rebuilt == 1 { "" } else { "s" },
        units::human(r.bytes)
    );
    if r.chunks_stuck > 0 {
        s += &format!(
            "; {} chunks have nowhere to go (add a spare)",
            r.chunks_stuck
        );
    }
    if !r.lost.is_empty() {
        let bytes: u64 = r.lost.iter().map(|(_, l)| l).sum();
        s += &format!(
            "; {} lost in {} ranges (reads of them fail; `damocles status` lists them)",
            units::human(bytes),
            r.lost.len()
        );
    }
    s
}

pub fn describe_reshape(p: &damocles_engine::Plan) -> String {
    let mut s = format!(
        "reshape: {} chunk move{} ({} written)",
        p.moves,
        if p.moves == 1 { "" } else { "s" },
        units::human(p.bytes_written)
    );
    if p.stuck > 0 {
        s += &format!(
            "; {} chunks have no room to move (add a member or free space)",
            p.stuck
        );
    }
    s
}

/// A forecast in words: what `plan` prints.
pub fn describe_forecast(f: &damocles_engine::Forecast, rate: u64) -> String {
    let p = &f.plan;
    let mut s = if f.size_after > f.size {
        format!(
            "volume        {}, grows to {} when the chunks have moved\n",
            units::human(f.size),
            units::human(f.size_after)
        )
    } else {
        format!(
            "volume        {} (unchanged); the members could hold {} with the new layout\n",
            units::human(f.size),
            units::human(f.capacity_after)
        )
    };
    s += &format!(
        "redundancy    survives {} member failure(s), {} after\n",
        f.tolerance_before, f.tolerance_after
    );
    s += &format!(
        "data moved    {} chunk moves{}: {} read, {} written\n",
        p.moves,
        if p.staging_moves > 0 {
            format!(" ({} of them to make room)", p.staging_moves)
        } else {
            String::new()
        },
        units::human(p.bytes_read),
        units::human(p.bytes_written)
    );
    if rate > 0 && p.bytes_written > 0 {
        s += &format!(
            "time          at least {} s at the rate limit of {}\n",
            p.bytes_written.div_ceil(rate),
            rate_text(rate)
        );
    }
    for w in &f.warnings {
        s += &format!("warning       {w}\n");
    }
    for r in &f.refusals {
        s += &format!("REFUSED       {r}\n");
    }
    s.trim_end().to_string()
}

/// A reshape request as the engine takes it: unset fields keep the array's values.
pub fn to_change(array: &Array, c: &ChangeSpec) -> Result<Change> {
    let st = array.status();
    let mut ids = Vec::new();
    for m in &c.remove {
        ids.push(array.find_member(m)?);
    }
    // What the volume converted has now: the named one, or the only one.
    let now = match &c.volume {
        Some(name) => array.volume_named(name)?.template,
        None => match array.volume_list().as_slice() {
            [v] => v.template,
            _ => damocles_engine::Template {
                level: st.level,
                copies: st.copies,
                stripe_unit: st.stripe_unit,
            },
        },
    };
    let template = if c.level.is_some() || c.copies.is_some() || c.stripe_unit.is_some() {
        let level: Level = match &c.level {
            Some(l) => l.parse()?,
            None => now.level,
        };
        let copies = match c.copies {
            Some(n) => n,
            None if level == now.level => now.copies,
            None => level.default_copies(),
        };
        Some(damocles_engine::Template {
            level,
            copies,
            stripe_unit: c.stripe_unit.unwrap_or(now.stripe_unit),
        })
    } else {
        None
    };
    Ok(Change {
        template,
        remove: ids,
        balance: c.balance,
        grow: c.grow,
        no_spares: c.no_spares,
        volume: c.volume.clone(),
    })
}

pub fn describe_scrub(r: &damocles_engine::ScrubReport) -> String {
    format!(
        "scrub {}: {} blocks checked, {} repaired, {} unrecoverable",
        if r.complete { "finished" } else { "stopped" },
        r.blocks_checked,
        r.repaired,
        r.unrecoverable
    )
}

/// The listening control socket; dropping it removes the socket file.
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Creates the socket (directory 0700, socket 0600) and serves it on a thread.
    pub fn start(path: &Path, shared: Arc<Shared>) -> Result<ControlServer> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = path.parent().unwrap_or(Path::new("."));
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        clear_stale(path)?;
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        // The socket exists with umask permissions for a moment; its directory is 0700 by
        // default, and changing the process-wide umask would race other threads.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", path.display()))?;
        *lock(&shared.socket) = Some(path.display().to_string());
        std::thread::Builder::new()
            .name("damocles-control".into())
            .spawn(move || accept_loop(listener, shared))
            .context("starting the control thread")?;
        Ok(ControlServer {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes a leftover socket file that nobody answers on; refuses one in use.
fn clear_stale(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        bail!("{} exists and is not a socket", path.display());
    }
    if UnixStream::connect(path).is_ok() {
        bail!(
            "{}: another damocles server answers there (give this one --control PATH)",
            path.display()
        );
    }
    std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("control socket: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            let mut s = stream;
            let _ = writeln!(s, "{}", encode(&Response::error("too many connections")));
            continue;
        }
        let sh = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("damocles-control-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(stream, &sh) {
                    tracing::debug!("control connection: {e}");
                }
                sh.connections.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("control socket: cannot start a thread: {e}");
        }
    }
}

fn encode(r: &Response) -> String {
    serde_json::to_string(r).unwrap_or_else(|e| format!(r#"{{"ok":false,"error":"{e}"}}"#))
}

fn serve_connection(stream: UnixStream, shared: &Arc<Shared>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_LINE {
            writeln!(out, "{}", encode(&Response::error("request line too long")))?;
            return Ok(());
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let resp = match serde_json::from_slice::<Request>(&line) {
            Ok(req) => shared.handle(req),
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        writeln!(out, "{}", encode(&resp))?;
    }
}
