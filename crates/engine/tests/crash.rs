//! Crash harness: random workloads on simulated members, power cut at a random I/O (also
//! during journal replay), reassembly with one more member failed where the profile allows,
//! and every 4 KiB block checked against the contents it is allowed to have.
//!
//! Migration cases run a reshape (convert, add, remove, balance) in slices between the
//! writes, so the cut lands before, during or after it; after the checks above they reopen
//! the array with all its members, finish the migration and check the data and the layout.
//!
//! Volume cases (`crash/volumes.rs`, numbered after these) write several volumes while
//! volumes are created, resized, renamed, deleted and trimmed, with a conversion or a
//! rebuild between the writes, and cut a format-1 array while it is upgraded.
//!
//! `DAMOCLES_CRASH_POINTS=N` sets how many crash points to run (default 3300, shared
//! equally by the cases: 132 each);
//! every failure names its case, seed and how to replay it: `DAMOCLES_CRASH_CASE=i
//! DAMOCLES_CRASH_POINTS=k+1` runs points 0..=k of case i alone (the seeds of the full run; a
//! point's cut depends on the points before it). `DAMOCLES_CRASH_CASE=i,j,...` runs those
//! cases, sharing the N points.
//! `DAMOCLES_CRASH_PARALLEL=1` flushes members in parallel as production does (then a seed
//! no longer replays exactly).

mod common;
#[path = "crash/pending.rs"]
mod pending;
#[path = "crash/volumes.rs"]
mod volumes;

use damocles_engine::layout::chunkmap::Template;
use damocles_engine::powercut::{PowerGrid, Rng};
use damocles_engine::{
    Array, AssembleOptions, Change, CreateOptions, Dev, Health, JobControl, Level, MemMember,
    MemberDevice, MemberHealth,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

const MIB: u64 = 1 << 20;
const BLOCK: usize = 4096;
/// The chunk size of every case's array.
const CHUNK: usize = 256 << 10;

#[derive(Clone, Copy, Debug)]
struct Case {
    level: Level,
    members: usize,
    /// Missing during the workload.
    degraded: bool,
    /// Fail one more member at restart.
    extra_failure: bool,
    journal: bool,
    stripe_unit: u64,
    /// The journal on a separate device (the last image), never failed.
    external_journal: bool,
    /// A blank device joins as a hot spare mid-workload, before the rebuild that every
    /// degraded case runs between writes (without a spare that rebuild is distributed:
    /// chunks move to free space or are laid out anew over the members left).
    rebuild: bool,
    /// A reshape run between the writes (see [`migration_workload`]).
    migration: Option<Migration>,
}

/// A migration: blank members join as active members, then the goal is set and the reshape
/// moves chunks towards it in slices between the writes.
#[derive(Clone, Copy, Debug)]
struct Migration {
    /// Blank members added with `add_member_grow` first (they are the last images).
    add: usize,
    /// The new level (stripe unit kept).
    to: Option<Level>,
    /// The member evacuated and removed.
    remove: Option<usize>,
    balance: bool,
    /// The change lowers redundancy (`start_reshape` needs force).
    force: bool,
    /// The volume is half of what the members hold: room to convert or evacuate in.
    half: bool,
}

impl Migration {
    fn change(&self, stripe_unit: u64) -> Change {
        Change {
            template: self.to.map(|level| Template {
                level,
                copies: level.default_copies(),
                stripe_unit,
            }),
            remove: self.remove.into_iter().collect(),
            balance: self.balance,
            grow: false,
            no_spares: false,
            volume: None,
        }
    }
}

/// Added members are larger: a member needs 4 MiB beyond its data offset to join.
const ADDED_SIZE: u64 = 6 * MIB;

/// What each block may read back as: its content at the last completed flush, or any
/// content written to it since.
#[derive(Clone)]
struct Model {
    current: Vec<u8>,
    stable: Vec<u8>,
    since_flush: HashMap<usize, Vec<Vec<u8>>>,
}

impl Model {
    fn new(size: usize) -> Model {
        Model {
            current: vec![0; size],
            stable: vec![0; size],
            since_flush: HashMap::new(),
        }
    }
    fn write(&mut self, off: usize, data: &[u8]) {
        self.current[off..off + data.len()].copy_from_slice(data);
        for b in off / BLOCK..(off + data.len()).div_ceil(BLOCK) {
            let blk = self.current[b * BLOCK..(b + 1) * BLOCK].to_vec();
            self.since_flush.entry(b).or_default().push(blk);
        }
    }
    fn flushed(&mut self) {
        self.stable.copy_from_slice(&self.current);
        self.since_flush.clear();
    }
    /// The first block that reads as something it may not be.
    fn violation(&self, image: &[u8]) -> Option<usize> {
        (0..image.len() / BLOCK).find(|&b| {
            let got = &image[b * BLOCK..(b + 1) * BLOCK];
            got != &self.stable[b * BLOCK..(b + 1) * BLOCK]
                && !self
                    .since_flush
                    .get(&b)
                    .is_some_and(|v| v.iter().any(|c| c == got))
        })
    }
}

fn fresh_images(case: &Case) -> Vec<Vec<u8>> {
    let blank = || -> Vec<Arc<MemMember>> {
        (0..case.members)
            .map(|i| Arc::new(MemMember::new(format!("m{i}"), 4 * MIB)))
            .collect()
    };
    let mut o = CreateOptions::new(case.level);
    o.stripe_unit = case.stripe_unit;
    o.chunk_size = Some(CHUNK as u64);
    o.journal = case.journal;
    if case.migration.is_some_and(|m| m.half) {
        let full = Array::create(blank().into_iter().map(|m| m as Dev).collect(), &o)
            .unwrap()
            .size();
        o.size = Some(full / 2);
        o.force = true;
    }
    let ms = blank();
    let journal = Arc::new(MemMember::new("journal", 3 * MIB));
    if case.external_journal {
        o.journal_device = Some(journal.clone() as Dev);
    }
    drop(Array::create(ms.iter().map(|m| m.clone() as Dev).collect(), &o).unwrap());
    let mut images: Vec<Vec<u8>> = ms.iter().map(|m| m.snapshot()).collect();
    if case.external_journal {
        images.push(journal.snapshot());
    }
    if case.rebuild {
        images.push(vec![0; 4 * MIB as usize]);
    }
    for _ in 0..case.migration.map_or(0, |m| m.add) {
        images.push(vec![0; ADDED_SIZE as usize]);
    }
    images
}

/// Assembles from `devs`. `uncertain` (an index into `devs`) is a device whose joining the
/// power cut may have cut short: when the array does not take it, it is left out.
fn assemble_maybe(
    devs: &[Dev],
    uncertain: Option<usize>,
    open: impl Fn(Vec<Dev>) -> damocles_engine::Result<Array>,
) -> damocles_engine::Result<(Array, bool)> {
    match open(devs.to_vec()) {
        Err(_) if uncertain.is_some() => {
            let u = uncertain.unwrap();
            let without: Vec<Dev> = devs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != u)
                .map(|(_, d)| d.clone())
                .collect();
            open(without).map(|a| (a, false))
        }
        r => r.map(|a| (a, true)),
    }
}

/// A member on `grid` for each image of `base`, named m0, m1, ...
fn grid_members(grid: &Arc<PowerGrid>, base: &[Vec<u8>]) -> Vec<Dev> {
    base.iter()
        .enumerate()
        .map(|(i, img)| grid.member(format!("m{i}"), img.clone()) as Dev)
        .collect()
}

fn assemble(devs: Vec<Dev>, budget: u64) -> damocles_engine::Result<Array> {
    Array::assemble(
        devs,
        AssembleOptions {
            read_only: false,
            dirty_budget: Some(budget),
            ..Default::default()
        },
    )
}

/// Runs the workload until it ends or the power fails; the model sees what was asked.
/// A rebuild runs at a random op (it has work only while degraded); with `spare`, the spare
/// joins first.
fn workload(a: &Array, model: &mut Model, rng: &mut Rng, spare: Option<Dev>) {
    let join_at = rng.below(20);
    let rebuild_at = join_at + 1 + rng.below(15);
    let mut spare = spare;
    for op in 0..40u64 {
        if op == join_at {
            if let Some(s) = spare.take() {
                if a.add_member(s, false).is_err() {
                    return;
                }
            }
        }
        if op == rebuild_at
            && spare.is_none()
            && a.rebuild(std::sync::Arc::new(damocles_engine::JobControl::new(0)))
                .is_err()
        {
            return;
        }
        if !step(a, model, rng, op) {
            return;
        }
    }
    if a.flush().is_ok() {
        model.flushed();
    }
}

/// One random request: a flush, or a write (zeros, data, or data with FUA). False when the
/// array failed it.
fn step(a: &Array, model: &mut Model, rng: &mut Rng, op: u64) -> bool {
    let size = model.current.len();
    let kind = rng.below(10);
    if kind == 0 {
        if a.flush().is_err() {
            return false;
        }
        model.flushed();
        return true;
    }
    // One write in eight covers one or two whole chunks: the commit writes those to fresh
    // slices and switches the map (redirect-on-write) instead of journaling them.
    let chunks = size / CHUNK;
    let (off, len) = if chunks > 0 && rng.below(8) == 0 {
        let n = (1 + rng.below(2) as usize).min(chunks);
        (
            rng.below((chunks - n + 1) as u64) as usize * CHUNK,
            n * CHUNK,
        )
    } else {
        let len = match rng.below(4) {
            0 => 1 + rng.below(700) as usize,
            1 => BLOCK * (1 + rng.below(4) as usize),
            2 => 1 + rng.below(40_000) as usize,
            _ => 1 + rng.below(150_000) as usize,
        }
        .min(size);
        (rng.below((size - len + 1) as u64) as usize, len)
    };
    let data: Vec<u8> = if kind == 1 {
        vec![0; len] // WRITE_ZEROES / TRIM as the NBD layer issues them
    } else {
        (0..len)
            .map(|i| (i as u64 ^ op.wrapping_mul(0x9E37) ^ rng.next_u64() & 0xff) as u8)
            .collect()
    };
    let fua = kind == 2;
    model.write(off, &data);
    if a.write_at(&data, off as u64).is_err() {
        return false;
    }
    if fua {
        if a.flush().is_err() {
            return false;
        }
        model.flushed();
    }
    true
}

/// Pauses a reshape deterministically: every member I/O looks whether the reshape running
/// has done its share (in bytes of old slices) and then cancels it; the move under way
/// completes, and `reshape` returns before the next.
#[derive(Default)]
struct Pause {
    job: Mutex<Option<(Arc<JobControl>, u64)>>,
}

impl Pause {
    fn check(&self) {
        if let Some((ctl, after)) = &*self.job.lock() {
            if ctl.progress().done >= *after {
                ctl.cancel();
            }
        }
    }
    /// Runs the reshape until about `bytes` are moved (`None`: to its end).
    fn reshape(
        &self,
        a: &Array,
        bytes: Option<u64>,
    ) -> damocles_engine::Result<damocles_engine::Plan> {
        let ctl = Arc::new(JobControl::new(0));
        *self.job.lock() = bytes.map(|b| (ctl.clone(), b));
        let r = a.reshape(ctl);
        *self.job.lock() = None;
        r
    }
}

/// A member whose I/Os drive a [`Pause`].
struct Paused {
    inner: Dev,
    pause: Arc<Pause>,
}

impl MemberDevice for Paused {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.pause.check();
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.pause.check();
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.pause.check();
        self.inner.flush()
    }
}

/// What a migration workload got done before it ended (or the power failed).
#[derive(Default)]
struct Progressed {
    /// Members whose `add_member_grow` returned.
    added: usize,
    /// Members whose joining began (one more than `added` if the cut came during it).
    touched: usize,
    /// `start_reshape` returned: the goal is in the metadata.
    goal_set: bool,
    /// The power failed during a reshape (not between its slices).
    cut_in_reshape: bool,
    /// A request failed though the power was on.
    unexpected: Option<String>,
}

/// The random workload with a migration: from a random op on, the blank members join one
/// per op, then the goal is set, then reshape slices of random length run between writes;
/// at the end the reshape mostly runs to its end (sometimes it is left for the restart).
fn migration_workload(
    a: &Array,
    model: &mut Model,
    rng: &mut Rng,
    case: &Case,
    adds: &[Dev],
    pause: &Pause,
    alive: &dyn Fn() -> bool,
) -> Progressed {
    let mig = case.migration.expect("a migration case");
    let stripe_unit = case.stripe_unit;
    let mut done = Progressed::default();
    let chunk = 256u64 << 10;
    let first = rng.below(12);
    let start_at = first + mig.add as u64;
    // Distinguishes a refusal or bug from the power failing.
    let failed = |mut done: Progressed, what: &str, e: damocles_engine::Error| {
        if alive() {
            done.unexpected = Some(format!("{what} failed with the power on: {e}"));
        }
        done
    };
    for op in 0..40u64 {
        if op >= first && done.touched < mig.add {
            done.touched += 1;
            match a.add_member_grow(adds[done.added].clone(), false) {
                Ok(_) => done.added += 1,
                Err(e) => return failed(done, "add_member_grow", e),
            }
        } else if op == start_at {
            match a.start_reshape(&mig.change(stripe_unit), mig.force) {
                Ok(_) => done.goal_set = true,
                Err(e) => return failed(done, "start_reshape", e),
            }
        } else if done.goal_set && rng.chance(30) {
            if let Err(e) = pause.reshape(a, Some(rng.below(3 * chunk))) {
                done.cut_in_reshape = true;
                return failed(done, "reshape", e);
            }
        }
        if !step(a, model, rng, op) {
            return done;
        }
    }
    if done.goal_set && rng.chance(75) {
        match pause.reshape(a, None) {
            Ok(p) if p.stuck > 0 && alive() => {
                done.unexpected = Some(format!("the reshape ended with chunks stuck: {p:?}"));
                return done;
            }
            Ok(_) => {}
            Err(e) => {
                done.cut_in_reshape = true;
                return failed(done, "reshape", e);
            }
        }
    }
    if a.flush().is_ok() {
        model.flushed();
    }
    done
}

/// What a crash point did.
struct Point {
    /// Member I/Os of the workload (up to the cut).
    ios: u64,
    /// The power failed mid-workload.
    died: bool,
    /// ... during a reshape.
    in_reshape: bool,
    /// The goal was never recorded, and setting it after the crash was refused.
    refused: bool,
}

/// One crash point. Returns a description of the broken promise, if any.
fn crash_point(
    case: &Case,
    base: &[Vec<u8>],
    seed: u64,
    total_ios: Option<u64>,
) -> Result<Point, String> {
    let mut rng = Rng::new(seed);
    // Serial member flushes in a seeded random order give a deterministic I/O order (a
    // failing seed replays) that still reaches every order in which parallel flushes can
    // complete. DAMOCLES_CRASH_PARALLEL=1 uses the production path instead.
    let flush_order = if std::env::var_os("DAMOCLES_CRASH_PARALLEL").is_some() {
        0
    } else {
        rng.next_u64() | 1
    };
    damocles_engine::SERIAL_FLUSHES.store(flush_order, std::sync::atomic::Ordering::Relaxed);
    let grid = PowerGrid::new();
    let sims = grid_members(&grid, base);
    let missing = if case.degraded {
        Some(rng.below(case.members as u64) as usize)
    } else {
        None
    };
    let budget = [16 << 10, 64 << 10, 1 << 20][rng.below(3) as usize];
    // The spare and the members a migration adds (the last images) are not members yet.
    let n_adds = case.migration.map_or(0, |m| m.add);
    let spare = case.rebuild.then(|| sims[sims.len() - 1 - n_adds].clone());
    let n_array = sims.len() - case.rebuild as usize - n_adds;
    // Migrations see the members through `Paused`, which stops reshape slices.
    let pause = Arc::new(Pause::default());
    let wrap = |d: &Dev| -> Dev {
        match case.migration {
            Some(_) => Arc::new(Paused {
                inner: d.clone(),
                pause: pause.clone(),
            }),
            None => d.clone(),
        }
    };
    let devs: Vec<Dev> = sims[..n_array]
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != missing)
        .map(|(_, d)| wrap(d))
        .collect();
    let adds: Vec<Dev> = sims[n_array + case.rebuild as usize..]
        .iter()
        .map(wrap)
        .collect();
    let a = assemble(devs, budget).map_err(|e| format!("first assemble: {e}"))?;
    // As served: a FLUSH is answered before its in-place writes (the next commit does them).
    a.defer_in_place(true);
    let before = grid.io_count();
    if let Some(n) = total_ios {
        grid.cut_at_io(before + rng.below(n.max(1)));
    }
    let mut model = Model::new(a.size() as usize);
    let progressed = match &case.migration {
        None => {
            workload(&a, &mut model, &mut rng, spare);
            Progressed::default()
        }
        Some(_) => {
            let alive = || !grid.is_dead();
            migration_workload(&a, &mut model, &mut rng, case, &adds, &pause, &alive)
        }
    };
    if let Some(e) = &progressed.unexpected {
        return Err(e.clone());
    }
    let ios = grid.io_count() - before;
    let died = grid.is_dead();
    // Cut before dropping: a dead machine does not get to close the array cleanly.
    let mut images: Vec<Arc<MemMember>> = grid.cut_final(rng.next_u64());
    drop(a);

    // The images a restart is given, as indexes into `images`, and the one the array may or
    // may not have taken (the spare, or a member whose joining was under way at the cut).
    // Members a migration never began to add hold nothing and are not given.
    let first_add = images.len() - n_adds;
    let given: Vec<usize> = (0..first_add + progressed.touched).collect();
    let uncertain = if case.rebuild {
        Some(first_add - 1)
    } else {
        (progressed.touched > progressed.added).then_some(first_add + progressed.added)
    };
    // Sometimes the power fails again while the journal is being replayed.
    if rng.chance(30) {
        let g2 = PowerGrid::new();
        let sims2: Vec<Dev> = images
            .iter()
            .enumerate()
            .map(|(i, m)| g2.member(format!("m{i}"), m.snapshot()) as Dev)
            .collect();
        g2.cut_at_io(1 + rng.below(60));
        let (devs, unsure) = pick(
            &sims2,
            &given,
            &missing.into_iter().collect::<Vec<_>>(),
            uncertain,
        );
        let a = assemble_maybe(&devs, unsure, |d| assemble(d, budget));
        images = g2.cut_final(rng.next_u64());
        drop(a);
    }

    let mut gone: Vec<usize> = missing.into_iter().collect();
    if case.extra_failure {
        let candidates: Vec<usize> = (0..case.members).filter(|i| !gone.contains(i)).collect();
        gone.push(candidates[rng.below(candidates.len() as u64) as usize]);
    }
    let mems: Vec<Dev> = images.iter().map(|m| m.clone() as Dev).collect();
    let (devs, unsure) = pick(&mems, &given, &gone, uncertain);
    let ro = AssembleOptions {
        read_only: true,
        ..Default::default()
    };
    let (a, took) = assemble_maybe(&devs, unsure, |d| Array::assemble(d, ro))
        .map_err(|e| format!("reassemble without {gone:?}: {e}"))?;
    if !took && case.migration.is_some() {
        let listed = a.status().members.len();
        if listed != case.members + progressed.added {
            return Err(format!(
                "the array lists {listed} members but refused the device of member {}",
                case.members + progressed.added
            ));
        }
    }
    let mut image = vec![0u8; a.size() as usize];
    a.read_at(&mut image, 0)
        .map_err(|e| format!("read after crash (members {gone:?} gone): {e}"))?;
    let bad = a.status().errors.checksum_errors;
    if bad > 0 {
        return Err(format!(
            "{bad} blocks failed their checksums after the crash (members {gone:?} gone): \
             checksums and data went out of step"
        ));
    }
    if let Some(b) = model.violation(&image) {
        return Err(format!(
            "block {b} (offset {}) reads as content it never had or lost a flushed write \
             (members {gone:?} gone)",
            b * BLOCK
        ));
    }
    drop(a);
    let mut refused = false;
    if case.migration.is_some() {
        let same = gone.is_empty().then_some(&image[..]);
        refused = !finish_migration(case, &mems, &given, uncertain, &progressed, &model, same)
            .map_err(|e| format!("finishing the migration after the crash: {e}"))?;
    }
    Ok(Point {
        ios,
        died,
        in_reshape: progressed.cut_in_reshape,
        refused,
    })
}

/// The devices `given` (indexes into `all`) without those `gone`, and where `uncertain`
/// ended up among them.
fn pick(
    all: &[Dev],
    given: &[usize],
    gone: &[usize],
    uncertain: Option<usize>,
) -> (Vec<Dev>, Option<usize>) {
    let keep: Vec<usize> = given
        .iter()
        .copied()
        .filter(|i| !gone.contains(i))
        .collect();
    let unsure = uncertain.and_then(|u| keep.iter().position(|&i| i == u));
    (keep.iter().map(|&i| all[i].clone()).collect(), unsure)
}

/// After the crash checks: the array opened for writing with all its members picks the
/// migration up (or, if the cut came before the goal was recorded, the operator sets it
/// again), runs it to its end, and the data is what it was and the layout the goal.
/// `same`: the volume as the crash checks read it, when they read it with all members.
/// Returns false when the goal was never recorded and setting it now is refused.
fn finish_migration(
    case: &Case,
    mems: &[Dev],
    given: &[usize],
    uncertain: Option<usize>,
    progressed: &Progressed,
    model: &Model,
    same: Option<&[u8]>,
) -> Result<bool, String> {
    let mig = case.migration.expect("a migration case");
    let (devs, unsure) = pick(mems, given, &[], uncertain);
    let (a, _) = assemble_maybe(&devs, unsure, |d| {
        Array::assemble(d, AssembleOptions::default())
    })
    .map_err(|e| format!("assemble for writing: {e}"))?;
    let read = |a: &Array| -> Result<Vec<u8>, String> {
        let mut v = vec![0u8; a.size() as usize];
        a.read_at(&mut v, 0).map_err(|e| format!("read: {e}"))?;
        Ok(v)
    };
    let before = read(&a)?;
    if let Some(b) = model.violation(&before) {
        return Err(format!(
            "opened for writing, block {b} reads as content it may not have"
        ));
    }
    if same.is_some_and(|s| s != before) {
        return Err("opened for writing, the volume reads otherwise than opened read-only".into());
    }
    let st = a.status();
    let joined = st.members.len() - case.members;
    let visible = mig.to.is_some_and(|l| st.level == l)
        || mig
            .remove
            .is_some_and(|r| st.members[r].state == MemberHealth::Removed);
    let set_again = if joined < mig.add {
        // The cut came while members were joining: the operator adds the rest.
        for i in joined..mig.add {
            let d = mems[mems.len() - mig.add + i].clone();
            a.add_member_grow(d, true)
                .map_err(|e| format!("adding member {} again: {e}", case.members + i))?;
        }
        true
    } else if a.reshape_pending() || visible {
        false
    } else if progressed.goal_set && !mig.balance {
        return Err("start_reshape returned, but the goal is not in the metadata".into());
    } else {
        // Not recorded (or a balance that has nothing left to do): set it again.
        true
    };
    if set_again {
        let change = mig.change(case.stripe_unit);
        if let Err(e) = a.start_reshape(&change, mig.force) {
            // The goal was never recorded, and the writes before the cut filled the array
            // more than when the workload would have set it: a refusal the forecast gives
            // (no room to work in) is legitimate; nothing was started, nothing resumes.
            let f = a.forecast(&change).map_err(|e| format!("forecast: {e}"))?;
            if f.refusals.is_empty() {
                return Err(format!("start_reshape again: {e}"));
            }
            return Ok(false);
        }
    }
    let plan = a
        .reshape(Arc::new(JobControl::new(0)))
        .map_err(|e| format!("resumed reshape: {e}"))?;
    if plan.stuck > 0 || a.reshape_pending() {
        return Err(format!(
            "the resumed reshape did not reach the goal: {plan:?}"
        ));
    }
    let after = read(&a)?;
    if let Some(b) = (0..after.len() / BLOCK)
        .find(|&b| after[b * BLOCK..][..BLOCK] != before[b * BLOCK..][..BLOCK])
    {
        return Err(format!("the resumed reshape changed block {b}"));
    }
    let st = a.status();
    if let Some(l) = mig.to {
        if st.level != l {
            return Err(format!("level is {:?}, the goal {l:?}", st.level));
        }
    }
    if let Some(r) = mig.remove {
        let m = &st.members[r];
        if m.state != MemberHealth::Removed || m.used != 0 {
            return Err(format!("member {r} not removed: {m:?}"));
        }
    }
    if mig.balance && st.chunks_allocated > 0 {
        if let Some(m) = st.members[case.members..].iter().find(|m| m.used == 0) {
            return Err(format!("balanced, but member {} holds nothing", m.index));
        }
    }
    if st.health != Health::Ok {
        return Err(format!(
            "health {:?} after the migration: {:?}",
            st.health, st.needs
        ));
    }
    Ok(true)
}

fn cases() -> Vec<Case> {
    let c = |level, members, degraded, extra_failure, stripe_unit| Case {
        level,
        members,
        degraded,
        extra_failure,
        journal: true,
        stripe_unit,
        external_journal: false,
        rebuild: false,
        migration: None,
    };
    let ext = |level, members, degraded, extra_failure| Case {
        external_journal: true,
        ..c(level, members, degraded, extra_failure, 16384)
    };
    let none = Migration {
        add: 0,
        to: None,
        remove: None,
        balance: false,
        force: false,
        half: false,
    };
    let mig = |level, members, stripe_unit, migration| Case {
        migration: Some(migration),
        ..c(level, members, false, true, stripe_unit)
    };
    vec![
        c(Level::Raid5, 4, false, true, 4096),
        c(Level::Raid5, 4, false, true, 16384),
        c(Level::Raid5, 4, true, false, 8192),
        c(Level::Raid6, 5, false, true, 4096),
        c(Level::Raid6, 5, true, true, 16384),
        c(Level::Raid1, 3, false, true, 4096),
        c(Level::Raid1, 2, true, false, 8192),
        c(Level::Raid10, 4, false, true, 16384),
        c(Level::Raid10, 4, true, false, 4096),
        ext(Level::Raid5, 4, false, true),
        ext(Level::Raid6, 5, true, true),
        Case {
            rebuild: true,
            ..c(Level::Raid6, 5, true, true, 8192)
        },
        Case {
            rebuild: true,
            ..c(Level::Raid1, 3, true, false, 4096)
        },
        // Up: two members join a raid1 that becomes raid5 over four.
        mig(
            Level::Raid1,
            2,
            16384,
            Migration {
                add: 2,
                to: Some(Level::Raid5),
                ..none
            },
        ),
        // Up: one member joins a raid5 that becomes raid6 over four (with the volume as
        // large as the members allow, some orders of writes leave no room to convert in,
        // which the forecast refuses: half of it).
        mig(
            Level::Raid5,
            3,
            16384,
            Migration {
                add: 1,
                to: Some(Level::Raid6),
                half: true,
                ..none
            },
        ),
        // Down (raid6 to raid5 lowers redundancy: forced).
        mig(
            Level::Raid6,
            5,
            8192,
            Migration {
                to: Some(Level::Raid5),
                force: true,
                half: true,
                ..none
            },
        ),
        mig(
            Level::Raid5,
            4,
            16384,
            Migration {
                to: Some(Level::Raid1),
                force: true,
                half: true,
                ..none
            },
        ),
        // Remove: a working member is evacuated.
        mig(
            Level::Raid5,
            5,
            8192,
            Migration {
                remove: Some(1),
                half: true,
                ..none
            },
        ),
        // Balance: two members join a raid5 and the old chunks spread over them.
        mig(
            Level::Raid5,
            3,
            16384,
            Migration {
                add: 2,
                balance: true,
                ..none
            },
        ),
        // single: no redundancy, so no member is missing or failed; chunks whole on one
        // member each, through the journal and the whole-chunk redirect alike.
        c(Level::Single, 3, false, false, 8192),
        // single -> raid1 over one more member, and raid1 -> single (lowers redundancy);
        // no member fails at restart (single chunks on it would be gone).
        Case {
            extra_failure: false,
            ..mig(
                Level::Single,
                2,
                8192,
                Migration {
                    add: 1,
                    to: Some(Level::Raid1),
                    half: true,
                    ..none
                },
            )
        },
        Case {
            extra_failure: false,
            ..mig(
                Level::Raid1,
                3,
                16384,
                Migration {
                    to: Some(Level::Single),
                    force: true,
                    half: true,
                    ..none
                },
            )
        },
    ]
}

/// Crash points of a run by default, shared by the cases, within the CI budget of a debug
/// build.
const DEFAULT_POINTS: u64 = 3300;

/// What a run of crash points found.
#[derive(Default)]
struct Tally {
    failures: Vec<String>,
    /// Points run.
    run: u64,
    /// ... where the power really failed mid-workload.
    cut: u64,
    /// Points of migration cases, and those cut during a reshape.
    migration: u64,
    cut_in_reshape: u64,
    /// Migration points whose goal, never recorded, was refused after the crash.
    refused: u64,
    /// Volume points cut during a volume operation (create, resize, delete, rename, trim,
    /// setting a conversion goal).
    cut_in_volume_op: u64,
}

/// Runs `per_case` crash points of each of `cases` (each with its index in [`cases`],
/// which makes its seeds).
fn run_cases(cases: &[(usize, Case)], per_case: u64) -> Tally {
    let mut t = Tally::default();
    for (ci, case) in cases {
        let base = fresh_images(case);
        // Cut points are drawn from the I/O count the workloads of this case make (a cut
        // beyond a workload's end just checks a clean run); seed 0 runs uncut to calibrate.
        let mut ios = 0u64;
        for k in 0..per_case {
            let seed = (*ci as u64) << 32 | k;
            let limit = (k > 0).then_some(ios);
            t.run += 1;
            t.migration += case.migration.is_some() as u64;
            match crash_point(case, &base, seed, limit) {
                Ok(p) => {
                    ios = ios.max(p.ios);
                    t.cut += p.died as u64;
                    t.cut_in_reshape += p.in_reshape as u64;
                    t.refused += p.refused as u64;
                }
                Err(e) => t.failures.push(format!(
                    "{case:?} seed {seed:#x}: {e} (replay: DAMOCLES_CRASH_CASE={ci} \
                     DAMOCLES_CRASH_POINTS={})",
                    k + 1
                )),
            }
        }
    }
    t
}

/// The cases of a run: the cases of [`cases`] and the volume cases, with their numbers.
type Chosen = (Vec<(usize, Case)>, Vec<(usize, volumes::VolCase)>);

#[test]
fn power_cuts_break_no_promise() {
    let points: u64 = std::env::var("DAMOCLES_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_POINTS);
    // DAMOCLES_CRASH_CASE=i[,j...] runs only those cases (all the points shared among them;
    // seeds as in the full run). The volume cases (see `volumes`) are numbered after
    // [`cases`].
    let all: Vec<(usize, Case)> = cases().into_iter().enumerate().collect();
    let n = all.len();
    let (chosen, vol): Chosen = match std::env::var("DAMOCLES_CRASH_CASE") {
        Ok(v) => {
            let picked: Vec<usize> = v
                .split(',')
                .map(|i| i.trim().parse().expect("DAMOCLES_CRASH_CASE: case numbers"))
                .collect();
            (
                picked.iter().filter(|&&i| i < n).map(|&i| all[i]).collect(),
                picked
                    .iter()
                    .filter(|&&i| i >= n)
                    .map(|&i| (i, volumes::CASES[i - n]))
                    .collect(),
            )
        }
        Err(_) => (
            all,
            volumes::CASES
                .iter()
                .copied()
                .enumerate()
                .map(|(i, c)| (n + i, c))
                .collect(),
        ),
    };
    let per_case = (points / (chosen.len() + vol.len()) as u64).max(1);
    let mut t = run_cases(&chosen, per_case);
    volumes::run(&vol, per_case, &mut t);
    assert!(
        t.failures.is_empty(),
        "{} of {} crash points broke a promise:\n{}",
        t.failures.len(),
        t.run,
        t.failures[..t.failures.len().min(10)].join("\n")
    );
    println!(
        "{} crash points across {} cases ({} cut mid-workload; {} of {} migration points cut \
         mid-reshape, {} refused a goal set after the crash; {} cut in a volume operation): \
         all promises held",
        t.run,
        chosen.len() + vol.len(),
        t.cut,
        t.cut_in_reshape,
        t.migration,
        t.refused,
        t.cut_in_volume_op
    );
    assert!(
        t.cut * 2 > t.run,
        "only {} of {} points cut the power mid-workload",
        t.cut,
        t.run
    );
    assert!(
        t.migration < 100 || t.refused * 20 <= t.migration,
        "{} of {} migration points could not set their goal after the crash",
        t.refused,
        t.migration
    );
    assert!(
        t.migration < 100 || t.cut_in_reshape * 5 >= t.migration,
        "only {} of {} migration points cut the power mid-reshape",
        t.cut_in_reshape,
        t.migration
    );
}

/// The harness can fail: without the journal, raid5 has the write hole and it is found.
#[test]
fn the_harness_finds_the_write_hole_without_a_journal() {
    let case = Case {
        level: Level::Raid5,
        members: 4,
        degraded: false,
        extra_failure: true,
        journal: false,
        stripe_unit: 4096,
        external_journal: false,
        rebuild: false,
        migration: None,
    };
    let t = run_cases(&[(0, case)], 150);
    assert!(
        !t.failures.is_empty(),
        "no violation found without a journal"
    );
}

/// Found by the migration cases (a reshape retires the journal after every chunk move):
/// members that sat the newest txg out still hold an older record in its half, and a cut
/// while that half was cleared could leave such a record as the newest one found, replayed
/// over newer data. Here raid1 over four members puts the two chunks written on disjoint
/// pairs; txgs 2 and 3 write the same block of one chunk, txg 4 the other chunk, and the
/// close (which retires the journal) is cut at every I/O.
#[test]
fn retiring_the_journal_never_revives_an_older_txg() {
    let ms: Vec<Arc<MemMember>> = (0..4)
        .map(|i| Arc::new(MemMember::new(format!("m{i}"), 4 * MIB)))
        .collect();
    let mut o = CreateOptions::new(Level::Raid1);
    o.chunk_size = Some(256 << 10);
    o.stripe_unit = 4096;
    drop(Array::create(ms.iter().map(|m| m.clone() as Dev).collect(), &o).unwrap());
    let base: Vec<Vec<u8>> = ms.iter().map(|m| m.snapshot()).collect();
    let x = 256 << 10; // a block of the second chunk
    let mut revived = Vec::new();
    for k in 0..40 {
        for seed in 0..16 {
            let grid = PowerGrid::new();
            let devs = grid_members(&grid, &base);
            let a = assemble(devs, 1 << 20).unwrap();
            for (off, fill) in [(0, 1u8), (x, 2), (x, 3), (0, 4)] {
                a.write_at(&[fill; BLOCK], off).unwrap();
                a.flush().unwrap();
            }
            let used: Vec<u64> = a.status().members.iter().map(|m| m.used).collect();
            assert_eq!(used.iter().filter(|&&u| u > 0).count(), 4, "{used:?}");
            grid.cut_at_io(grid.io_count() + k);
            drop(a); // commits nothing, retires the journal
            let images = grid.cut_final(seed);
            for gone in 0..4 {
                let devs: Vec<Dev> = (0..4)
                    .filter(|&i| i != gone)
                    .map(|i| images[i].clone() as Dev)
                    .collect();
                let ro = AssembleOptions {
                    read_only: true,
                    ..Default::default()
                };
                let a = Array::assemble(devs, ro).unwrap();
                let mut got = [0u8; 2];
                a.read_at(&mut got[..1], 0).unwrap();
                a.read_at(&mut got[1..], x).unwrap();
                if got != [4, 3] {
                    revived.push(format!(
                        "cut at I/O {k}, seed {seed}, without member {gone}: {got:?}"
                    ));
                }
            }
        }
    }
    assert!(revived.is_empty(), "older data came back: {revived:?}");
}

/// A member that stops answering (no request returns) while the array is written: it is
/// failed at the fail limit and the writes complete on the others; then the power fails at
/// any I/O of the next commit. Assembled again from what the members hold (the hung one
/// included, as it comes back after the power cycle), nothing flushed is lost, nothing not
/// written is damaged, and each block written at the cut is old or new.
#[test]
fn a_hung_member_then_a_power_cut_loses_nothing_flushed() {
    use damocles_engine::FaultMember;
    use std::time::Duration;
    let ms: Vec<Arc<MemMember>> = (0..4)
        .map(|i| Arc::new(MemMember::new(format!("m{i}"), 4 * MIB)))
        .collect();
    let mut o = CreateOptions::new(Level::Raid5);
    o.chunk_size = Some(512 << 10);
    o.stripe_unit = 16 << 10;
    drop(Array::create(ms.iter().map(|m| m.clone() as Dev).collect(), &o).unwrap());
    let base: Vec<Vec<u8>> = ms.iter().map(|m| m.snapshot()).collect();
    let fill = |n: u8, len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ n.wrapping_mul(97))
            .collect()
    };
    let (b_off, b_len) = (0usize, 512 << 10);
    let (c_off, c_len) = (1 << 20, 512 << 10);
    let mut bad = Vec::new();
    for k in (0..40).step_by(3) {
        let seed = k * 7 + 1;
        let grid = PowerGrid::new();
        let sims = grid_members(&grid, &base);
        let hung = FaultMember::new(sims[2].clone());
        let devs: Vec<Dev> = (0..4)
            .map(|i| {
                if i == 2 {
                    hung.clone() as Dev
                } else {
                    sims[i].clone()
                }
            })
            .collect();
        let a = Arc::new(
            Array::assemble(
                devs,
                AssembleOptions {
                    dirty_budget: Some(1 << 20),
                    slow_limit: Some(Duration::from_millis(20)),
                    fail_limit: Some(Duration::from_millis(150)),
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        a.spawn_watch();
        let size = a.size() as usize;
        let a_data = fill(1, size);
        a.write_at(&a_data, 0).unwrap();
        a.flush().unwrap();
        hung.hang();
        let b = fill(2, b_len);
        a.write_at(&b, b_off as u64).unwrap();
        a.flush()
            .expect("a flush completes without the hung member");
        assert_eq!(a.status().members[2].state, MemberHealth::Failed);
        let c = fill(3, c_len);
        a.write_at(&c, c_off as u64).unwrap();
        grid.cut_at_io(grid.io_count() + k);
        let _ = a.flush();
        drop(a);
        let images = grid.cut_final(seed);
        hung.release();
        let ro = AssembleOptions {
            read_only: true,
            ..Default::default()
        };
        let a = Array::assemble(images.iter().map(|m| m.clone() as Dev).collect(), ro).unwrap();
        let mut got = vec![0u8; size];
        a.read_at(&mut got, 0).unwrap();
        for blk in 0..size / BLOCK {
            let r = blk * BLOCK..(blk + 1) * BLOCK;
            let ok = if r.start >= b_off && r.end <= b_off + b_len {
                got[r.clone()] == b[r.start - b_off..r.end - b_off]
            } else if r.start >= c_off && r.end <= c_off + c_len {
                got[r.clone()] == a_data[r.clone()]
                    || got[r.clone()] == c[r.start - c_off..r.end - c_off]
            } else {
                got[r.clone()] == a_data[r.clone()]
            };
            if !ok {
                bad.push(format!("cut at I/O +{k}: block {blk} wrong"));
                break;
            }
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}
