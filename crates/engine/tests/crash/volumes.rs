//! Crash cases with volumes: several volumes of different profiles written at random while
//! volumes are created, grown, shrunk, renamed, deleted and trimmed between the writes, with
//! a job (a one-volume conversion, or a rebuild with a member missing) running between
//! them; and a format-1 array cut while it is upgraded at a write-mode assemble and
//! written after.
//!
//! After the cut, the array is opened read-only and: the volume table is the last one
//! committed, or (when a volume operation was under way at the cut) the one that operation
//! makes — never a mix; each volume's blocks hold what they may (its flushed data, or data
//! written since; zeros in what a create, grow or trim made new, never a deleted or shrunk
//! range's old data); no chunk is allocated that no volume holds.

#[path = "upgrade.rs"]
mod upgrade;

use super::{assemble, Model, Pause, Paused, Tally, BLOCK, CHUNK, MIB};
use damocles_engine::powercut::{PowerGrid, Rng};
use damocles_engine::{
    Array, AssembleOptions, Change, CreateOptions, Dev, Error, JobControl, Level, MemMember,
    Template, Volume, VolumeSize, VolumeSpec,
};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const CS: u64 = CHUNK as u64;

/// A volume case.
#[derive(Clone, Copy, Debug)]
pub(super) enum VolCase {
    /// Three volumes (raid5 reserved, raid1 thin, raid0 reserved) on four members; a
    /// conversion of one volume runs in slices between the writes.
    Convert,
    /// Two volumes (raid5 reserved, raid1 thin) on five members, one missing throughout; a
    /// distributed rebuild runs at a random op.
    Rebuild,
    /// A format-1 raid5 array: the power fails during the write-mode assemble that upgrades
    /// it, or during the writes after.
    Upgrade,
}

pub(super) const CASES: [VolCase; 3] = [VolCase::Convert, VolCase::Rebuild, VolCase::Upgrade];

fn template(level: Level) -> Template {
    Template {
        level,
        copies: level.default_copies(),
        stripe_unit: 16384,
    }
}

fn members_of(case: VolCase) -> usize {
    match case {
        VolCase::Convert => 4,
        VolCase::Rebuild => 5,
        VolCase::Upgrade => 3,
    }
}

/// The members' images a case starts from, and (for the upgrade) the volume's data.
fn base_images(case: VolCase) -> (Vec<Vec<u8>>, Vec<u8>) {
    let ms: Vec<Arc<MemMember>> = (0..members_of(case))
        .map(|i| Arc::new(MemMember::new(format!("m{i}"), 6 * MIB)))
        .collect();
    let devs = || ms.iter().map(|m| m.clone() as Dev).collect::<Vec<Dev>>();
    let mut o = CreateOptions::new(Level::Raid5);
    o.chunk_size = Some(CS);
    o.stripe_unit = 16384;
    o.name = "tank".into();
    o.no_volume = !matches!(case, VolCase::Upgrade);
    let a = Array::create(devs(), &o).expect("create");
    let mut data = Vec::new();
    let vols: &[(&str, Level, u64, bool)] = match case {
        VolCase::Convert => &[
            ("vms", Level::Raid5, 4 * CS + 8192, false),
            ("scratch", Level::Raid1, 6 * CS, true),
            ("fast", Level::Raid0, 2 * CS, false),
        ],
        VolCase::Rebuild => &[
            ("vms", Level::Raid5, 4 * CS + 8192, false),
            ("scratch", Level::Raid1, 5 * CS, true),
        ],
        VolCase::Upgrade => {
            let mut rng = Rng::new(7);
            data = (0..a.size()).map(|_| rng.next_u64() as u8).collect();
            a.write_at(&data, 0).expect("write");
            a.flush().expect("flush");
            &[]
        }
    };
    for &(name, level, size, thin) in vols {
        a.create_volume(&VolumeSpec {
            name: name.into(),
            template: template(level),
            size: VolumeSize::Bytes(size),
            thin,
        })
        .expect("create volume");
    }
    drop(a);
    if matches!(case, VolCase::Upgrade) {
        super::common::downgrade_to_format_1(&ms);
    }
    (ms.iter().map(|m| m.snapshot()).collect(), data)
}

/// A volume operation, as the workload asked it.
#[derive(Clone, Debug)]
enum VolOp {
    Create(VolumeSpec),
    Resize { id: u32, size: u64 },
    Delete { id: u32 },
    Rename { id: u32, to: String },
    Trim,
    Convert { id: u32, to: Template },
}

/// Volume tables compared on what matters (not the creation time).
fn key(v: &Volume) -> (u32, &str, Template, u64, bool, &[(u32, u32)]) {
    (v.id, &v.name, v.template, v.size, v.thin, &v.extents)
}

fn same(a: &[Volume], b: &[Volume]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

/// Whether `got` is the table `op` makes of `before`.
fn after_op(op: &VolOp, before: &[Volume], got: &[Volume]) -> bool {
    let others_same = |id: u32| {
        same(
            &before
                .iter()
                .filter(|v| v.id != id)
                .cloned()
                .collect::<Vec<_>>(),
            &got.iter()
                .filter(|v| v.id != id)
                .cloned()
                .collect::<Vec<_>>(),
        )
    };
    let one = |id: u32| got.iter().find(|v| v.id == id);
    let old = |id: u32| before.iter().find(|v| v.id == id);
    match op {
        VolOp::Create(spec) => {
            let Some(n) = got.iter().find(|v| v.name == spec.name) else {
                return false;
            };
            let size = match spec.size {
                VolumeSize::Bytes(b) => b.next_multiple_of(4096),
                VolumeSize::Max => n.size,
            };
            others_same(n.id)
                && got.len() == before.len() + 1
                && (n.template, n.size, n.thin) == (spec.template, size, spec.thin)
                && n.chunk_count() == size.div_ceil(CS)
        }
        VolOp::Resize { id, size } => match (old(*id), one(*id)) {
            (Some(o), Some(n)) => {
                let keep = o.chunk_count().min(size.div_ceil(CS)) as usize;
                let (oi, ni): (Vec<usize>, Vec<usize>) =
                    (o.chunk_indexes().collect(), n.chunk_indexes().collect());
                others_same(*id)
                    && n.size == *size
                    && n.chunk_count() == size.div_ceil(CS)
                    && oi[..keep] == ni[..keep]
                    && (n.name.as_str(), n.template, n.thin)
                        == (o.name.as_str(), o.template, o.thin)
            }
            _ => false,
        },
        VolOp::Delete { id } => {
            one(*id).is_none() && got.len() + 1 == before.len() && others_same(*id)
        }
        VolOp::Rename { id, to } => match (old(*id), one(*id)) {
            (Some(o), Some(n)) => {
                let mut want = o.clone();
                want.name = to.clone();
                others_same(*id) && key(&want) == key(n)
            }
            _ => false,
        },
        VolOp::Trim => same(before, got),
        VolOp::Convert { id, to } => match (old(*id), one(*id)) {
            (Some(o), Some(n)) => {
                let mut want = o.clone();
                want.template = *to;
                others_same(*id) && key(&want) == key(n)
            }
            _ => false,
        },
    }
}

/// The volumes as the workload knows them: the table last committed, a model of each
/// volume's bytes (by id), and, while a volume operation runs, both as they were before it.
#[derive(Clone, Default)]
struct Vols {
    table: Vec<Volume>,
    models: HashMap<u32, Model>,
}

impl Model {
    /// The volume grew or shrank to `size`: what lies past the old end reads as zeros.
    fn resize(&mut self, size: usize) {
        self.current.resize(size, 0);
        self.stable.resize(size, 0);
        let blocks = size / BLOCK;
        self.since_flush.retain(|&b, _| b < blocks);
    }
    /// Bytes `[lo, hi)` were given back: they read as zeros from now on.
    fn zeroed(&mut self, lo: usize, hi: usize) {
        self.current[lo..hi].fill(0);
        self.stable[lo..hi].fill(0);
        for b in lo / BLOCK..hi.div_ceil(BLOCK) {
            self.since_flush.remove(&b);
        }
    }
}

/// What the workload left behind.
#[derive(Default)]
struct Outcome {
    vols: Vols,
    /// The volume operation the power failed in, with the volumes before it.
    interrupted: Option<(VolOp, Vols)>,
    unexpected: Option<String>,
}

struct Work<'a> {
    a: &'a Array,
    rng: &'a mut Rng,
    alive: &'a dyn Fn() -> bool,
    vols: Vols,
    names: u64,
    /// A member is missing.
    degraded: bool,
}

/// A volume operation the power failed in (or that failed unexpectedly: the message),
/// with the volumes before it.
type Broken = Box<(VolOp, Vols, Option<String>)>;

/// `Ok(true)`: done; `Ok(false)`: refused with the power on (nothing changed);
/// `Err`: the power failed (or something unexpected, then the message).
type Step = Result<bool, Option<String>>;

impl Work<'_> {
    fn fail(&self, what: &str, e: Error) -> Option<String> {
        (self.alive)().then(|| format!("{what} failed with the power on: {e}"))
    }

    fn pick(&mut self) -> Option<Volume> {
        let n = self.vols.table.len() as u64;
        (n > 0).then(|| self.vols.table[self.rng.below(n) as usize].clone())
    }

    fn flush(&mut self) -> Step {
        self.a.flush().map_err(|e| self.fail("flush", e))?;
        self.vols.models.values_mut().for_each(Model::flushed);
        Ok(true)
    }

    fn write(&mut self, op: u64) -> Step {
        let Some(v) = self.pick() else {
            return Ok(false);
        };
        let size = v.size as usize;
        let len = match self.rng.below(4) {
            0 => 1 + self.rng.below(700) as usize,
            1 => CHUNK,
            2 => BLOCK * (1 + self.rng.below(4) as usize),
            _ => 1 + self.rng.below(120_000) as usize,
        }
        .min(size);
        let off = if len == CHUNK && self.rng.chance(70) {
            self.rng.below((size / CHUNK) as u64) as usize * CHUNK
        } else {
            self.rng.below((size - len + 1) as u64) as usize
        };
        let data: Vec<u8> = if self.rng.chance(10) {
            vec![0; len]
        } else {
            let salt = self.rng.next_u64();
            (0..len)
                .map(|i| (i as u64 ^ op.wrapping_mul(0x9E37) ^ salt ^ (v.id as u64) << 5) as u8)
                .collect()
        };
        self.vols
            .models
            .get_mut(&v.id)
            .expect("a model per volume")
            .write(off, &data);
        self.a
            .volume_write(v.id, &data, off as u64)
            .map_err(|e| self.fail("volume_write", e))?;
        Ok(true)
    }

    /// Runs volume operation `op` (the models already made what it makes); on success the
    /// table is taken from the array. Refusals for space are no error.
    fn volume_op(&mut self, op: VolOp, before: Vols) -> Result<bool, Broken> {
        let a = self.a;
        let r = match &op {
            VolOp::Create(spec) => a.create_volume(spec).map(|_| ()),
            VolOp::Resize { id, size } => {
                let name = &before.table.iter().find(|v| v.id == *id).unwrap().name;
                a.resize_volume(name, VolumeSize::Bytes(*size), true)
                    .map(|_| ())
            }
            VolOp::Delete { id } => {
                let name = &before.table.iter().find(|v| v.id == *id).unwrap().name;
                a.delete_volume(name)
            }
            VolOp::Rename { id, to } => {
                let name = &before.table.iter().find(|v| v.id == *id).unwrap().name;
                a.rename_volume(name, to)
            }
            VolOp::Trim => unreachable!("trims run in Work::trim"),
            VolOp::Convert { id, to } => {
                let name = before
                    .table
                    .iter()
                    .find(|v| v.id == *id)
                    .unwrap()
                    .name
                    .clone();
                let change = Change {
                    template: Some(*to),
                    volume: Some(name),
                    ..Default::default()
                };
                a.start_reshape(&change, true).map(|_| ())
            }
        };
        match r {
            Ok(()) => {
                self.vols.table = a.volume_list();
                if let VolOp::Create(spec) = &op {
                    let v = a.volume_named(&spec.name).expect("created");
                    self.vols.models.insert(v.id, Model::new(v.size as usize));
                }
                Ok(true)
            }
            Err(Error::NoSpace(_)) | Err(Error::Invalid(_)) if (self.alive)() => {
                // Refused (no room, or the forecast said no): nothing changed.
                self.vols = before;
                Ok(false)
            }
            Err(e) => {
                let msg = self.fail(&format!("{op:?}"), e);
                Err(Box::new((op, before, msg)))
            }
        }
    }

    /// A random volume operation (none that frees chunks while chunks are to move).
    fn random_op(&mut self, moving: bool) -> Option<VolOp> {
        let v = self.pick()?;
        let before = self.vols.table.clone();
        fn vm<'a>(s: &'a mut Work, id: u32) -> &'a mut Model {
            s.vols.models.get_mut(&id).expect("model")
        }
        Some(match self.rng.below(6) {
            0 if before.len() < 5 => {
                self.names += 1;
                // Not raid0 beside a missing member: new chunks may be laid out on it (a
                // degraded array allocates over all its members), and raid0 has no
                // redundancy to serve them from.
                let levels = match self.degraded {
                    false => &[Level::Raid1, Level::Raid5, Level::Raid0][..],
                    true => &[Level::Raid1, Level::Raid5][..],
                };
                let level = levels[self.rng.below(levels.len() as u64) as usize];
                let size = (1 + self.rng.below(3 * CS / 4096)) * 4096;
                VolOp::Create(VolumeSpec {
                    name: format!("new{}", self.names),
                    template: template(level),
                    size: VolumeSize::Bytes(size),
                    thin: self.rng.chance(50),
                })
            }
            1 => {
                let size = v.size + (1 + self.rng.below(2 * CS / 4096)) * 4096;
                vm(self, v.id).resize(size as usize);
                VolOp::Resize { id: v.id, size }
            }
            2 if !moving && v.size > 4096 => {
                let size = (1 + self.rng.below(v.size / 4096 - 1)) * 4096;
                vm(self, v.id).resize(size as usize);
                VolOp::Resize { id: v.id, size }
            }
            3 if !moving && before.len() > 1 => {
                self.vols.models.remove(&v.id);
                VolOp::Delete { id: v.id }
            }
            4 => {
                self.names += 1;
                VolOp::Rename {
                    id: v.id,
                    to: format!("r{}", self.names),
                }
            }
            _ => VolOp::Trim,
        })
    }

    /// A trim of a random range of a thin volume: its whole chunks go back.
    fn trim(&mut self) -> Result<bool, Broken> {
        let thin: Vec<Volume> = self.vols.table.iter().filter(|v| v.thin).cloned().collect();
        if thin.is_empty() {
            return Ok(false);
        }
        let v = thin[self.rng.below(thin.len() as u64) as usize].clone();
        let before = self.vols.clone();
        let lo = self.rng.below(v.size / 4096) * 4096;
        let len = (1 + self.rng.below((v.size - lo) / 4096)) * 4096;
        let m = self.vols.models.get_mut(&v.id).expect("model");
        let (s, e) = (lo.next_multiple_of(CS), lo + len);
        let mut k = s;
        while k < e {
            let hi = (k + CS).min(v.size);
            if hi <= e {
                m.zeroed(k as usize, hi as usize);
            }
            k += CS;
        }
        match self.a.volume_trim(v.id, lo, len) {
            Ok(()) => Ok(true),
            Err(e) => {
                let msg = self.fail("volume_trim", e);
                Err(Box::new((VolOp::Trim, before, msg)))
            }
        }
    }
}

/// The random workload: writes and flushes, a volume operation one op in five, and the
/// case's job.
fn workload(
    case: VolCase,
    a: &Array,
    rng: &mut Rng,
    pause: &Pause,
    alive: &dyn Fn() -> bool,
) -> Outcome {
    let mut vols = Vols {
        table: a.volume_list(),
        ..Default::default()
    };
    for v in &vols.table {
        vols.models.insert(v.id, Model::new(v.size as usize));
    }
    let mut w = Work {
        a,
        rng,
        alive,
        vols,
        names: 0,
        degraded: matches!(case, VolCase::Rebuild),
    };
    let job_at = w.rng.below(25);
    let mut converting = false;
    let mut out = Outcome::default();
    let interrupted = |w: Work, e: Broken| {
        let (op, before, msg) = *e;
        Outcome {
            vols: w.vols,
            interrupted: Some((op, before)),
            unexpected: msg,
        }
    };
    for op in 0..40u64 {
        if op == job_at {
            match case {
                VolCase::Rebuild => {
                    if let Err(e) = a.rebuild(Arc::new(JobControl::new(0))) {
                        out.unexpected = w.fail("rebuild", e);
                        out.vols = w.vols;
                        return out;
                    }
                }
                _ => {
                    let Some(v) = w.pick() else { continue };
                    let to = template(match v.template.level {
                        Level::Raid1 => Level::Raid5,
                        _ => Level::Raid1,
                    });
                    let before = w.vols.clone();
                    match w.volume_op(VolOp::Convert { id: v.id, to }, before) {
                        Ok(done) => converting = done,
                        Err(e) => return interrupted(w, e),
                    }
                }
            }
        }
        let moving = converting && a.reshape_pending();
        if moving && w.rng.chance(30) {
            if let Err(e) = pause.reshape(a, Some(w.rng.below(3 * CS))) {
                out.unexpected = w.fail("reshape", e);
                out.vols = w.vols;
                return out;
            }
        }
        let r = match w.rng.below(10) {
            0 => w.flush().map_err(|m| (None, m)),
            1 | 2 => {
                let before = w.vols.clone();
                match w.random_op(moving) {
                    None => Ok(false),
                    Some(VolOp::Trim) => {
                        w.vols = before;
                        w.trim().map_err(|e| {
                            let (o, b, m) = *e;
                            (Some((o, b)), m)
                        })
                    }
                    Some(o) => w.volume_op(o, before).map_err(|e| {
                        let (o, b, m) = *e;
                        (Some((o, b)), m)
                    }),
                }
            }
            _ => w.write(op).map_err(|m| (None, m)),
        };
        if let Err((int, msg)) = r {
            return Outcome {
                vols: w.vols,
                interrupted: int,
                unexpected: msg,
            };
        }
    }
    if converting && w.rng.chance(75) {
        if let Err(e) = pause.reshape(a, None) {
            out.unexpected = w.fail("reshape", e);
            out.vols = w.vols;
            return out;
        }
    }
    let _ = w.flush();
    out.vols = w.vols;
    out
}

/// Checks the array after the crash against what the workload left: the table and the
/// data of one alternative (after, or before an interrupted operation) must both hold.
fn check(a: &Array, out: &Outcome) -> Result<(), String> {
    let got = a.volume_list();
    let mut alts: Vec<(&Vols, bool)> = Vec::new();
    match &out.interrupted {
        None => alts.push((&out.vols, same(&got, &out.vols.table))),
        Some((op, before)) => {
            alts.push((before, same(&got, &before.table)));
            alts.push((&out.vols, after_op(op, &before.table, &got)));
        }
    }
    if !alts.iter().any(|&(_, t)| t) {
        return Err(format!(
            "the volume table after the crash is neither before nor after {:?}: {got:?}",
            out.interrupted.as_ref().map(|(o, _)| o)
        ));
    }
    let mut why = Vec::new();
    for (vols, _) in alts.into_iter().filter(|&(_, t)| t) {
        match check_data(a, &got, vols) {
            Ok(()) => return check_space(a, &got),
            Err(e) => why.push(e),
        }
    }
    Err(why.join("; or "))
}

fn check_data(a: &Array, got: &[Volume], vols: &Vols) -> Result<(), String> {
    for v in got {
        let fresh;
        let m = match vols.models.get(&v.id) {
            Some(m) => m,
            None => {
                fresh = Model::new(v.size as usize);
                &fresh
            }
        };
        let mut image = vec![0u8; v.size as usize];
        a.volume_read(v.id, &mut image, 0)
            .map_err(|e| format!("reading volume {:?}: {e}", v.name))?;
        if m.current.len() != image.len() {
            return Err(format!(
                "volume {:?}: size {} in the model",
                v.name,
                m.current.len()
            ));
        }
        if let Some(b) = m.violation(&image) {
            return Err(format!(
                "volume {:?} ({}): block {b} (offset {}) reads as content it may not have",
                v.name,
                v.template.level,
                b * BLOCK
            ));
        }
    }
    let bad = a.status().errors.checksum_errors;
    if bad > 0 {
        return Err(format!("{bad} blocks failed their checksums"));
    }
    Ok(())
}

/// No chunk is allocated that no volume holds (a deleted or shrunk volume's chunks are
/// freed with the table that drops them).
fn check_space(a: &Array, got: &[Volume]) -> Result<(), String> {
    let held: u64 = a
        .volume_statuses()
        .iter()
        .map(|v| v.allocated.div_ceil(CS))
        .sum();
    let all = a.status().chunks_allocated as u64;
    if held != all {
        return Err(format!(
            "{all} chunks allocated, the volumes hold {held}: {got:?}"
        ));
    }
    Ok(())
}

/// One crash point of a volume case: the I/Os its workload made, whether the power
/// failed mid-workload, and whether in a volume operation.
fn crash_point(
    case: VolCase,
    base: &(Vec<Vec<u8>>, Vec<u8>),
    seed: u64,
    total_ios: Option<u64>,
) -> Result<(u64, bool, bool), String> {
    let mut rng = Rng::new(seed);
    damocles_engine::SERIAL_FLUSHES.store(rng.next_u64() | 1, Ordering::Relaxed);
    let grid = PowerGrid::new();
    let pause = Arc::new(Pause::default());
    let sims: Vec<Dev> = base
        .0
        .iter()
        .enumerate()
        .map(|(i, img)| {
            Arc::new(Paused {
                inner: grid.member(format!("m{i}"), img.clone()),
                pause: pause.clone(),
            }) as Dev
        })
        .collect();
    let missing = matches!(case, VolCase::Rebuild).then(|| rng.below(sims.len() as u64) as usize);
    let present: Vec<usize> = (0..sims.len()).filter(|&i| Some(i) != missing).collect();
    let budget = [16 << 10, 64 << 10, 1 << 20][rng.below(3) as usize];
    let given: Vec<Dev> = present.iter().map(|&i| sims[i].clone()).collect();
    let alive = || !grid.is_dead();
    let cut = |before: u64, rng: &mut Rng| {
        if let Some(n) = total_ios {
            grid.cut_at_io(before + rng.below(n.max(1)));
        }
    };
    // What the workload did, read before the cut below marks the power dead.
    let done = |before: u64| (grid.io_count() - before, grid.is_dead());
    let (out, images, (ios, died)) = match case {
        VolCase::Upgrade => {
            // The cut may come in the assemble that upgrades the metadata.
            cut(0, &mut rng);
            let out = upgrade::workload(given, budget, &base.1, &mut rng, &alive)?;
            let d = done(0);
            (out, grid.cut_final(rng.next_u64()), d)
        }
        _ => {
            let a = assemble(given, budget).map_err(|e| format!("first assemble: {e}"))?;
            let before = grid.io_count();
            cut(before, &mut rng);
            let out = workload(case, &a, &mut rng, &pause, &alive);
            let d = done(before);
            // Cut before dropping: a dead machine does not close the array cleanly.
            let images = grid.cut_final(rng.next_u64());
            drop(a);
            (out, images, d)
        }
    };
    if let Some(e) = &out.unexpected {
        return Err(e.clone());
    }
    let mut images = images;
    let pick = |imgs: &[Arc<MemMember>]| -> Vec<Dev> {
        present.iter().map(|&i| imgs[i].clone() as Dev).collect()
    };
    // Sometimes the power fails again while the array is opened for writing (journal
    // replay, the upgrade).
    if rng.chance(30) {
        let g2 = PowerGrid::new();
        let sims2: Vec<Dev> = images
            .iter()
            .enumerate()
            .map(|(i, m)| g2.member(format!("m{i}"), m.snapshot()) as Dev)
            .collect();
        g2.cut_at_io(1 + rng.below(80));
        let a = assemble(present.iter().map(|&i| sims2[i].clone()).collect(), budget);
        images = g2.cut_final(rng.next_u64());
        drop(a);
    }
    let ro = AssembleOptions {
        read_only: true,
        ..Default::default()
    };
    let a = Array::assemble(pick(&images), ro).map_err(|e| format!("reassemble: {e}"))?;
    match case {
        VolCase::Upgrade => upgrade::check(&a, &out, 0)?,
        _ => check(&a, &out)?,
    }
    drop(a);
    // Opened for writing (the journal replayed and retired, a format-1 array upgraded),
    // the same holds.
    let a = Array::assemble(pick(&images), AssembleOptions::default())
        .map_err(|e| format!("assemble for writing after the crash: {e}"))?;
    match case {
        VolCase::Upgrade => upgrade::check(&a, &out, 2)?,
        _ => check(&a, &out).map_err(|e| format!("opened for writing: {e}"))?,
    }
    Ok((ios, died, out.interrupted.is_some()))
}

/// Runs `per_case` crash points of each volume case in `chosen` (each with its number in
/// the harness, which makes its seeds).
pub(super) fn run(chosen: &[(usize, VolCase)], per_case: u64, t: &mut Tally) {
    for &(ci, case) in chosen {
        let base = base_images(case);
        let mut ios = 0u64;
        for k in 0..per_case {
            let seed = (ci as u64) << 32 | k;
            t.run += 1;
            match crash_point(case, &base, seed, (k > 0).then_some(ios)) {
                Ok((n, died, in_op)) => {
                    ios = ios.max(n);
                    t.cut += died as u64;
                    t.cut_in_volume_op += in_op as u64;
                }
                Err(e) => t.failures.push(format!(
                    "{case:?} seed {seed:#x}: {e} (replay: DAMOCLES_CRASH_CASE={ci} \
                     DAMOCLES_CRASH_POINTS={})",
                    k + 1
                )),
            }
        }
    }
}
