//! `damocles rebuild` and `damocles scrub`: long jobs, run by the server of a served array
//! (and followed from here) or in the foreground on members given.

use crate::cmd::status::summary;
use crate::cmd::{target, Target};
use crate::control::proto::{JobKind, Request};
use crate::control::server::{describe_rebuild, describe_reshape, describe_scrub};
use crate::control::Client;
use crate::members;
use crate::progress::Meter;
use crate::units;
use anyhow::{anyhow, bail, Context, Result};
use damocles_engine::{JobControl, Status};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a watcher asks the server.
const POLL: Duration = Duration::from_millis(500);

#[derive(clap::Args)]
pub struct JobArgs {
    /// The served array: its name, UUID, or control socket path. Optional when only one
    /// array is served.
    #[arg(long, value_name = "NAME", conflicts_with = "members")]
    pub(crate) array: Option<String>,
    /// Rate limit in bytes per second of member I/O: written by a rebuild or reshape, read
    /// by a scrub (suffixes K, M, G; 0 = none). Served:
    /// defaults to 200M (the server's --rebuild-rate for rebuilds), and sets the limit of
    /// a job already running. Not served: no limit unless given.
    #[arg(long, value_parser = units::parse_size, value_name = "RATE")]
    pub(crate) rate: Option<u64>,
    /// Served only: follow the running job with a progress bar; start nothing.
    #[arg(long, conflicts_with_all = ["background", "cancel", "rate", "members"])]
    pub(crate) watch: bool,
    /// Served only: start the job and return at once (`status` or --watch show progress).
    #[arg(long, conflicts_with_all = ["cancel", "members"])]
    pub(crate) background: bool,
    /// Served only: stop the running job at its next checkpoint (a later run resumes).
    #[arg(long, conflicts_with_all = ["rate", "members"])]
    pub(crate) cancel: bool,
    /// Members of an array that is not served: the job runs here, in the foreground.
    #[arg(value_name = "MEMBER")]
    pub(crate) members: Vec<PathBuf>,
}

/// Rebuild redundancy onto spares, replacements or free space on the other members.
///
/// Moves every piece of data that sits on a failed member (or on one being replaced) to a
/// hot spare, the replacement, or free space on the surviving members where it fits. Each
/// chunk is committed on its own, so an interrupted rebuild resumes where it stopped.
///
/// Served (no MEMBER...): the server runs the rebuild while serving I/O, and this command
/// follows it with a progress bar and ETA until it ends; Ctrl-C stops following, not the
/// rebuild. A served array also starts rebuilds by itself when a member fails or a spare is
/// added. Not served: the rebuild runs here in the foreground; Ctrl-C stops it at the next
/// chunk.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles rebuild --watch
  damocles rebuild --array tank --rate 500M
  damocles rebuild d0.img d2.img d3.img d4.img")]
pub struct RebuildArgs {
    #[command(flatten)]
    job: JobArgs,
}

/// Read every block, verify checksums and parity, and repair from redundancy.
///
/// Results (blocks checked, repaired, unrecoverable) go to `status`. Resumable: an
/// interrupted scrub continues where it stopped.
///
/// Served (no MEMBER...): the server runs the scrub while serving I/O, and this command
/// follows it with a progress bar and ETA until it ends (--background returns at once;
/// Ctrl-C stops following, not the scrub). Not served: the scrub runs here in the
/// foreground; Ctrl-C stops it.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles scrub --background
  damocles scrub --watch
  damocles scrub d0.img d1.img d2.img d3.img")]
pub struct ScrubArgs {
    #[command(flatten)]
    job: JobArgs,
}

pub fn rebuild(a: RebuildArgs) -> Result<()> {
    run(JobKind::Rebuild, a.job)
}

pub fn scrub(a: ScrubArgs) -> Result<()> {
    run(JobKind::Scrub, a.job)
}

fn run(kind: JobKind, a: JobArgs) -> Result<()> {
    let start = match kind {
        JobKind::Rebuild => Request::Rebuild { rate: a.rate },
        JobKind::Scrub => Request::Scrub { rate: a.rate },
        JobKind::Reshape => Request::Reshape {
            change: Default::default(),
            force: false,
            dry_run: false,
            rate: a.rate,
        },
    };
    run_job(kind, kind.name(), a, start, &|_| Ok(()))
}

/// Runs a job: served, by sending `start` (then following it); not served, by running
/// `prepare` and then the job on the members here. `command` is the command line (after
/// `damocles`) that starts it, for messages (there is no `damocles reshape`: `convert` and
/// `balance` start reshapes).
pub(crate) fn run_job(
    kind: JobKind,
    command: &str,
    a: JobArgs,
    start: Request,
    prepare: &dyn Fn(&damocles_engine::Array) -> Result<()>,
) -> Result<()> {
    let usage = format!("damocles {command} MEMBER...");
    match target(a.array.as_deref(), a.members, &usage)? {
        Target::Served(c) => served(c, kind, command, start, a.watch, a.background, a.cancel),
        Target::Members(paths) => offline(&paths, kind, a.rate, prepare),
    }
}

fn served(
    mut c: Client,
    kind: JobKind,
    command: &str,
    start: Request,
    watch: bool,
    background: bool,
    cancel: bool,
) -> Result<()> {
    if cancel {
        let r = c.call(&Request::Cancel { job: kind })?;
        println!("{}", r.message.unwrap_or_default());
        return Ok(());
    }
    // Events from now on are shown while following.
    let seq = c
        .call(&Request::Events { after: u64::MAX })?
        .next
        .unwrap_or(0);
    let mut said = Vec::new();
    if !watch {
        let r = c.call(&start)?;
        // A reshape's forecast: what it does beyond the obvious (spares it takes, ...).
        let warnings = r.forecast.as_ref().and_then(|f| f["warnings"].as_array());
        for w in warnings.into_iter().flatten().filter_map(|w| w.as_str()) {
            println!("note: {w}");
        }
        if let Some(m) = r.message {
            println!("{m}");
            said.push(m);
        }
        if background {
            if r.job.is_some_and(|j| j.running) {
                println!("`damocles {command} --watch` follows it; `damocles status` shows it");
            }
            return Ok(());
        }
    }
    follow(&mut c, kind, seq, said, !watch)
}

/// Shows the job's progress and the array's events until the job ends.
/// `started`: this command started the job (so its failure is this command's failure).
fn follow(
    c: &mut Client,
    kind: JobKind,
    mut seq: u64,
    mut said: Vec<String>,
    started: bool,
) -> Result<()> {
    let mut meter = Meter::new(kind.name());
    let mut saw_running = false;
    let mut finished_event = false;
    let finished = format!("{}-finished", kind.name());
    let state = loop {
        let j = c.call(&Request::Job { job: kind })?.job.unwrap_or_default();
        let ev = c.call(&Request::Events { after: seq })?;
        for e in ev.events.unwrap_or_default() {
            seq = seq.max(e["seq"].as_u64().unwrap_or(0));
            finished_event |= e["event"].as_str() == Some(finished.as_str());
            if let Some(m) = e["message"].as_str() {
                meter.println(m);
                said.push(m.to_string());
            }
        }
        if let Some(p) = &j.progress {
            meter.update(p);
        }
        if !j.running {
            break j;
        }
        saw_running = true;
        std::thread::sleep(POLL);
    };
    // The last poll's figures are stale once the job has ended: its own words follow.
    meter.finish(None);
    let idle = !saw_running && said.is_empty();
    if idle {
        if started {
            println!("no {} is running", kind.name());
        } else {
            println!(
                "no {} is running (--watch only follows one; without it the command starts one)",
                kind.name()
            );
        }
    }
    if let Some(m) = state.last.as_ref() {
        if idle {
            println!("last {}: {m}", kind.name());
        } else if !finished_event && !said.contains(m) {
            println!("{m}");
        }
    }
    let st = c
        .call(&Request::Status {})?
        .status
        .context("the server sent no status")?;
    println!("{}", summary(&serde_json::from_value::<Status>(st)?));
    if state.last_failed && (saw_running || started) {
        bail!("the {} failed", kind.name());
    }
    Ok(())
}

/// Runs the job on the members here, with a progress bar, until it ends or Ctrl-C.
fn offline(
    paths: &[PathBuf],
    kind: JobKind,
    rate: Option<u64>,
    prepare: &dyn Fn(&damocles_engine::Array) -> Result<()>,
) -> Result<()> {
    let array = members::assemble(paths, false)?;
    prepare(&array)?;
    let ctl = Arc::new(JobControl::new(rate.unwrap_or(0)));
    stop_on_signal(ctl.clone(), kind.name());
    let started = Instant::now();
    let outcome = std::thread::scope(|s| -> Result<String> {
        let job = s.spawn(|| -> Result<String> {
            Ok(match kind {
                JobKind::Rebuild => describe_rebuild(&array.rebuild(ctl.clone())?),
                JobKind::Scrub => describe_scrub(&array.scrub(ctl.clone())?),
                JobKind::Reshape => describe_reshape(&array.reshape(ctl.clone())?),
            })
        });
        let mut meter = Meter::new(kind.name());
        let mut shown = false;
        while !job.is_finished() {
            let p = ctl.progress();
            if p.total > 0 {
                meter.update(&p);
                shown = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let p = ctl.progress();
        meter.finish(shown.then_some(&p));
        job.join()
            .map_err(|_| anyhow!("the {} thread panicked", kind.name()))?
    })?;
    println!("{outcome}");
    if ctl.progress().total > 0 {
        println!("took {:.1} s", started.elapsed().as_secs_f64());
    }
    if ctl.is_cancelled() {
        println!(
            "stopped at a checkpoint; run the same command again to resume the {}",
            kind.name()
        );
    }
    println!("{}", summary(&array.status()));
    Ok(())
}

/// SIGINT/SIGTERM stop the job at its next checkpoint; a second one quits at once.
fn stop_on_signal(ctl: Arc<JobControl>, what: &'static str) {
    let spawned = std::thread::Builder::new()
        .name("damocles-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                for n in 0..2 {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    if n == 0 {
                        eprintln!(
                            "stopping the {what} at its next checkpoint (again to quit at once)"
                        );
                        ctl.cancel();
                    }
                }
                std::process::exit(130);
            });
        });
    if let Err(e) = spawned {
        tracing::warn!("no signal handling for the {what}: {e}");
    }
}
