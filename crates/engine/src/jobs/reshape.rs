//! Reshape: level conversion, balance and member evacuation, all as chunk moves. A group
//! of moves writes each chunk's content in its new place, flushes them, and only then does
//! one map commit point the chunks there; the old slices are never written, so a crash
//! leaves the old or the new chunks in force, and the goal (template, `balancing`, members
//! `leaving`) is in the metadata: a restarted array picks up where it stopped. The planner
//! is a pure function of the map, so `plan` runs the very same steps without I/O and its
//! figures are the operation's.

use super::Jobs;
use crate::error::JobKind;
use crate::layout::planner::{Goal, Plan, Planner, GROUP_BYTES};
use crate::member::{flush_some, Dev};
use crate::meta::template_tolerance;
use crate::meta::{alloc_candidates, member_spaces};
use crate::units::merge_ranges;
use std::collections::HashMap;

use super::JobControl;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::layout::chunkmap::{Allocator, Chunk, ChunkMap, Template};
use crate::layout::profile::Profile;
use crate::layout::volumes::{room_for, Volume};
use crate::ondisk::metadata::{ArrayMeta, MemberState};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

use crate::units::BLOCK_LEN as BLOCK;
/// Chunks written in their new places, not yet committed.
#[derive(Default)]
struct Copied {
    moved: Vec<(usize, Arc<Chunk>)>,
    /// Members their new slices are on (to flush).
    flush: Vec<u16>,
    csum_blocks: HashMap<u16, Vec<u64>>,
    /// Volume ranges that could not be read (written as zeros).
    lost: Vec<(u64, u64)>,
}

/// A reshape request and its forecast, for `plan` and the changing commands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Forecast {
    pub plan: Plan,
    pub tolerance_before: usize,
    pub tolerance_after: usize,
    /// Volume size, and what the members could hold with the new layout.
    pub size: u64,
    pub capacity_after: u64,
    /// The volume size when the reshape ends (larger than `size` only with `grow`).
    pub size_after: u64,
    /// Problems that make the change refused (unless forced, where that is allowed).
    pub refusals: Vec<String>,
    pub warnings: Vec<String>,
}

/// A change of shape the user asks for.
#[derive(Clone, Debug, Default)]
pub struct Change {
    /// New level/copies/stripe unit (`None`: keep).
    pub template: Option<Template>,
    /// Members to evacuate and remove.
    pub remove: Vec<usize>,
    /// Re-lay chunks as wide as the members allow.
    pub balance: bool,
    /// When the chunks have moved, grow the volume to what the members then hold.
    pub grow: bool,
    /// Do not let hot spares join a new layout that needs the room (they stay spares).
    pub no_spares: bool,
    /// The volume whose level `template` changes (`None`: the array's only volume).
    pub volume: Option<String>,
}

impl Jobs {
    /// The planner for the goal recorded in `meta`.
    pub(crate) fn planner(&self, meta: &ArrayMeta) -> Planner {
        let spaces = member_spaces(&meta.members, self.sb_layout.data_offset);
        let goal = self.goal_of(meta);
        let mut fresh_use = Vec::new();
        if goal.balance {
            fresh_use = vec![0; spaces.len()];
            let mut a = Allocator::new(&spaces, &ChunkMap::new(self.chunk_size, 0));
            for (idx, _) in meta.map.allocated() {
                let t = goal.template_for(idx);
                let Some(c) = a.allocate(&t, self.chunk_size, &goal.targets) else {
                    break;
                };
                for s in &c.slices {
                    fresh_use[s.member as usize] += c.slice_len;
                }
            }
        }
        Planner {
            spaces,
            chunk_size: self.chunk_size,
            goal,
            fresh_use,
            group_bytes: GROUP_BYTES,
        }
    }

    fn goal_of(&self, meta: &ArrayMeta) -> Goal {
        let members = self.members();
        let leaving: Vec<u16> = (0..meta.members.len() as u16)
            .filter(|&i| meta.members[i as usize].leaving)
            .collect();
        let targets = (0..meta.members.len() as u16)
            .filter(|&i| {
                let m = &meta.members[i as usize];
                // Members beyond the open set are hypothetical ones (`members_needed`).
                m.state == MemberState::Active
                    && !m.leaving
                    && members.get(i as usize).is_none_or(|d| d.is_some())
            })
            .collect();
        Goal {
            template: meta.template,
            volumes: meta.volumes.clone(),
            leaving,
            balance: meta.balancing,
            targets,
            future: alloc_candidates(meta),
        }
    }

    /// The metadata as it would be with `change` applied (not committed).
    fn with_change(&self, meta: &ArrayMeta, change: &Change) -> Result<ArrayMeta> {
        let mut next = meta.clone();
        if let Some(t) = change.template {
            Profile {
                level: t.level,
                width: t.level.min_width(t.copies),
                copies: t.copies,
                stripe_unit: t.stripe_unit,
            }
            .validate()?;
            match self.volume_changed(meta, change)? {
                Some(k) => {
                    next.volumes[k].template = t;
                    if next.volumes.len() == 1 {
                        next.template = t;
                    }
                }
                None => next.template = t,
            }
        }
        for &i in &change.remove {
            let m = next
                .members
                .get_mut(i)
                .ok_or_else(|| Error::Invalid(format!("no member {i}")))?;
            if m.state == MemberState::Removed {
                return Err(Error::Invalid(format!("member {i} is already removed")));
            }
            m.leaving = true;
        }
        next.balancing |= change.balance;
        next.grow_after |= change.grow;
        if change.template.is_some() && !change.no_spares && !self.holds_all(&next) {
            // As mdadm's --grow does: hot spares join when the new layout needs them.
            for m in next.members.iter_mut() {
                if m.state == MemberState::Spare && m.replaces.is_none() && !m.leaving {
                    m.state = MemberState::Active;
                }
            }
        }
        Ok(next)
    }

    /// What the members `meta` would place chunks on can hold in its layout, in bytes:
    /// of volume `changed` (the others' needs placed first), or of the array's default
    /// template.
    fn capacity_of(&self, meta: &ArrayMeta, changed: Option<usize>) -> u64 {
        let planner = self.planner(meta);
        let mut a = Allocator::new(&planner.spaces, &ChunkMap::new(self.chunk_size, 0));
        let t = match changed {
            Some(k) => {
                for (i, v) in meta.volumes.iter().enumerate() {
                    if i != k {
                        for _ in 0..self.volume_need(meta, v) {
                            a.allocate(&v.template, self.chunk_size, &planner.goal.targets);
                        }
                    }
                }
                meta.volumes[k].template
            }
            None => meta.template,
        };
        let fit = a.count_fitting(
            &t,
            self.chunk_size,
            &planner.goal.targets,
            u32::MAX as usize,
        );
        fit as u64 * self.chunk_size
    }

    /// Chunks volume `v` needs room for: all of them when reserved, those written when thin.
    fn volume_need(&self, meta: &ArrayMeta, v: &Volume) -> usize {
        if v.thin {
            v.chunk_indexes()
                .filter(|&i| meta.map.chunks.get(i).is_some_and(|c| c.is_some()))
                .count()
        } else {
            v.chunk_count() as usize
        }
    }

    /// Whether the members `meta` would place chunks on hold every volume laid out afresh
    /// in its template (reserved volumes whole, thin ones as far as they are written).
    fn holds_all(&self, meta: &ArrayMeta) -> bool {
        let planner = self.planner(meta);
        let a = Allocator::new(&planner.spaces, &ChunkMap::new(self.chunk_size, 0));
        let needs: Vec<(Template, usize)> = meta
            .volumes
            .iter()
            .map(|v| (v.template, self.volume_need(meta, v)))
            .collect();
        room_for(&a, &needs, self.chunk_size, &planner.goal.targets)
    }

    /// The volume whose template `change` sets: the one named, or the only one. Several
    /// volumes and none named is refused, with their names.
    pub(crate) fn volume_changed(
        &self,
        meta: &ArrayMeta,
        change: &Change,
    ) -> Result<Option<usize>> {
        let names = || {
            meta.volumes
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &change.volume {
            Some(name) => meta
                .volumes
                .iter()
                .position(|v| &v.name == name)
                .map(Some)
                .ok_or_else(|| {
                    Error::Invalid(format!("no volume named {name:?} (volumes: {})", names()))
                }),
            None if change.template.is_none() => Ok(None),
            None => match meta.volumes.len() {
                0 => Ok(None),
                1 => Ok(Some(0)),
                _ => Err(Error::Invalid(format!(
                    "the array holds several volumes ({}): name the one to convert with --volume",
                    names()
                ))),
            },
        }
    }

    /// How many more members as large as the largest one `next` needs to hold the volume
    /// (`None`: more than 16).
    fn members_needed(&self, next: &ArrayMeta) -> Option<usize> {
        let largest = next
            .members
            .iter()
            .filter(|m| m.state != MemberState::Removed)
            .max_by_key(|m| m.size)?
            .clone();
        let mut more = next.clone();
        for n in 1..=16 {
            let mut m = largest.clone();
            m.state = MemberState::Active;
            m.leaving = false;
            m.replaces = None;
            more.members.push(m);
            if self.holds_all(&more) {
                return Some(n);
            }
        }
        None
    }

    /// What `change` would do: moves, capacity, tolerance, and why it would be refused.
    pub fn forecast(&self, change: &Change) -> Result<Forecast> {
        let meta = self.store.lock().meta.clone();
        let next = self.with_change(&meta, change)?;
        let mut planner = self.planner(&next);
        let (plan, after) = planner.simulate_to(&next.map);
        let changed = self.volume_changed(&meta, change)?;
        let tolerance = |m: &ArrayMeta| match changed {
            Some(k) => template_tolerance(&m.volumes[k].template),
            None => m
                .templates()
                .iter()
                .map(template_tolerance)
                .min()
                .unwrap_or(0),
        };
        let (t_before, t_after) = (tolerance(&meta), tolerance(&next));
        let (size, level_after) = match changed {
            Some(k) => (meta.volumes[k].size, next.volumes[k].template.level),
            None => (self.size(), next.template.level),
        };
        let capacity_after = self.capacity_of(&next, changed);
        let mut refusals = Vec::new();
        let mut warnings = Vec::new();
        let joining: Vec<usize> = (0..meta.members.len())
            .filter(|&i| {
                meta.members[i].state == MemberState::Spare
                    && next.members[i].state == MemberState::Active
            })
            .collect();
        if !joining.is_empty() {
            warnings.push(format!(
                "hot spare{} {joining:?} become{} member{} of the new layout (it needs the room)",
                if joining.len() > 1 { "s" } else { "" },
                if joining.len() > 1 { "" } else { "s" },
                if joining.len() > 1 { "s" } else { "" },
            ));
        }
        if !self.holds_all(&next) {
            let spares = meta
                .members
                .iter()
                .filter(|m| m.state == MemberState::Spare && m.replaces.is_none())
                .count();
            let counted = if change.no_spares || spares == 0 {
                ""
            } else {
                " (hot spares included)"
            };
            let more = match self.members_needed(&next) {
                Some(n) => format!(
                    "{n} more member{} as large as the largest",
                    if n > 1 { "s" } else { "" }
                ),
                None => "more members".to_string(),
            };
            let spare_note = match (spares, change.no_spares) {
                (0, _) => "there are no hot spares".to_string(),
                (n, true) => format!(
                    "{n} hot spare{} left out by --no-spares",
                    if n > 1 { "s" } else { "" }
                ),
                (n, false) => format!(
                    "the {n} hot spare{} already counted",
                    if n > 1 { "s" } else { "" }
                ),
            };
            refusals.push(format!(
                "the members{counted} can hold {capacity_after} bytes as {}, less than the volume's {} bytes: {more} needed ({spare_note}); add members first",
                level_after, size
            ));
        } else if plan.stuck > 0 {
            refusals.push(format!(
                "{} chunks would have no room to move into (the members are too full to work in): add a member or free space first",
                plan.stuck
            ));
        }
        if t_after < t_before {
            warnings.push(format!(
                "redundancy goes down: survives {t_after} member failure(s) instead of {t_before}"
            ));
        }
        if self.health() != crate::meta::Health::Ok {
            warnings.push("the array is not healthy: a rebuild may be needed first".into());
        }
        let size_after = if next.grow_after && plan.stuck == 0 {
            let mut end = next.clone();
            end.map = after;
            self.grow_after_reshape(&mut end).map_or(size, |(_, to)| to)
        } else {
            size
        };
        Ok(Forecast {
            plan,
            tolerance_before: t_before,
            tolerance_after: t_after,
            size,
            capacity_after,
            size_after,
            refusals,
            warnings,
        })
    }

    /// Records `change` as the array's goal (after checking it, see [`Jobs::forecast`]);
    /// [`Jobs::reshape`] then moves the chunks. Lowering redundancy needs `force`.
    pub fn start_reshape(&self, change: &Change, force: bool) -> Result<Forecast> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let f = self.forecast(change)?;
        if let Some(r) = f.refusals.first() {
            return Err(Error::Invalid(r.clone()));
        }
        if f.tolerance_after < f.tolerance_before && !force {
            return Err(Error::Invalid(format!(
                "this lowers redundancy (survives {} member failure(s) instead of {}); use --force to do it anyway",
                f.tolerance_after, f.tolerance_before
            )));
        }
        let _commit = self.commit_lock();
        let mut st = self.store.lock();
        let next = self.with_change(&st.meta, change)?;
        self.commit_meta(&mut st, next)?;
        drop(st);
        drop(_commit);
        // A reshape already running (a balance after `add --grow`, say) takes the new goal
        // at its next move: what it has left to do is now this forecast's work.
        if let Some(j) = self.reshape_job() {
            j.set_total(j.progress().done + f.plan.bytes_written);
        }
        self.kick_reshape();
        Ok(f)
    }

    /// Whether chunks still wait for a move towards the recorded goal.
    pub fn reshape_pending(&self) -> bool {
        let meta = self.store.lock().meta.clone();
        meta.balancing
            || meta.grow_after
            || meta.members.iter().any(|m| m.leaving)
            || self.chunks_to_move_in(&meta) > 0
    }

    /// Chunks that still wait for a move towards the goal recorded in `meta` (0 when no
    /// conversion, balance or removal is under way). Takes no lock: with a balance under
    /// way it lays chunks out afresh, which is too slow to do under the state lock.
    pub(crate) fn chunks_to_move_in(&self, meta: &ArrayMeta) -> usize {
        self.planner(meta).count_wanting(&meta.map)
    }

    /// Moves chunks towards the recorded goal until it is reached (or nothing can move),
    /// one group of moves per commit. Runs while I/O is served; resumable; `ctl` cancels
    /// (pauses; the moves already written in the group are committed).
    pub fn reshape(&self, ctl: Arc<JobControl>) -> Result<Plan> {
        let _claim = self.claim(JobKind::Reshape, &ctl)?;
        let (forecast, group_bytes) = {
            let meta = self.store.lock().meta.clone();
            let mut p = self.planner(&meta);
            (p.simulate(&meta.map), p.group_bytes)
        };
        ctl.set_total(forecast.bytes_written);
        self.emit(
            EventKind::ReshapeStarted,
            None,
            None,
            format!(
                "reshape started: {} chunk moves, {} bytes to write",
                forecast.moves, forecast.bytes_written
            ),
        );
        let mut done = Plan::default();
        let mut staged = HashSet::new();
        while !ctl.is_cancelled() {
            // As a rebuild does: commits and journal-less writes wait while a group moves.
            let commits = self.journal.as_ref().map(|_| self.commit_lock());
            let next_txg = commits.as_ref().map(|g| **g);
            let _direct = self.chunk_gate.write();
            // Planned on a copy, off the state lock that reads take (a group under a balance
            // goal costs a pass over the map per move); the locks held keep the map as is.
            let meta = self.store.lock().meta.clone();
            let group = Planner {
                group_bytes,
                ..self.planner(&meta)
            }
            .next_group(&meta.map, &staged);
            let olds: Vec<Arc<Chunk>> = group
                .iter()
                .map(|m| meta.map.chunks[m.idx].clone().expect("allocated"))
                .collect();
            if group.is_empty() {
                break;
            }
            let members = self.members();
            let mut copied = Copied::default();
            for (m, old) in group.iter().zip(&olds) {
                // A pause commits the moves made so far.
                if ctl.is_cancelled() {
                    break;
                }
                self.copy_chunk(m.idx, old, &m.to, &members, &ctl, &mut copied)?;
                done.count(m, old);
                if m.staging {
                    staged.insert(m.idx);
                }
            }
            if !copied.lost.is_empty() {
                tracing::warn!("reshape: {} ranges unreadable", copied.lost.len());
            }
            self.commit_moves(copied, &members, next_txg)?;
            // Writes and flushes go on while the rate limit makes this job wait.
            drop(_direct);
            drop(commits);
            ctl.throttle();
        }
        if !ctl.is_cancelled() {
            ctl.set_total(ctl.progress().done);
            done.stuck = self.finish_reshape()?;
        }
        self.emit(
            EventKind::ReshapeFinished,
            None,
            None,
            format!(
                "reshape {}: {} chunk moves, {} bytes written{}",
                if ctl.is_cancelled() {
                    "paused"
                } else {
                    "finished"
                },
                done.moves,
                done.bytes_written,
                if done.stuck > 0 {
                    format!("; {} chunks have no room to move", done.stuck)
                } else {
                    String::new()
                }
            ),
        );
        Ok(done)
    }

    /// The goal is reached: leaving members that hold nothing are removed, the balance flag
    /// is cleared. Returns the chunks that still want a move.
    fn finish_reshape(&self) -> Result<usize> {
        let _commit = self.commit_lock();
        let mut st = self.store.lock();
        let stuck = self.planner(&st.meta).count_wanting(&st.meta.map);
        let mut meta = st.meta.clone();
        let holds = |i: usize| meta.map.used_on(i) > 0;
        let gone: Vec<usize> = (0..meta.members.len())
            .filter(|&i| meta.members[i].leaving && !holds(i))
            .collect();
        for &i in &gone {
            meta.members[i].state = MemberState::Removed;
            meta.members[i].leaving = false;
        }
        let mut changed = !gone.is_empty() || (meta.balancing && stuck == 0);
        let mut grown = None;
        if stuck == 0 {
            meta.balancing = false;
            changed |= meta.grow_after;
            grown = self.grow_after_reshape(&mut meta);
        }
        if changed {
            self.commit_meta(&mut st, meta)?;
            let mut avail = (*self.members()).clone();
            for &i in &gone {
                avail[i] = None;
            }
            self.set.set_usable(Arc::new(avail));
        }
        drop(st);
        if let Some((from, to)) = grown {
            self.emit(
                EventKind::VolumeGrown,
                None,
                None,
                format!("volume grown from {from} to {to} bytes"),
            );
        }
        for i in gone {
            self.emit(
                EventKind::MemberRemoved,
                Some(i),
                None,
                format!("member {i} holds nothing any more and is removed"),
            );
        }
        Ok(stuck)
    }

    /// Writes chunk `idx` (now laid out as `old`) anew as `new`, flushes it, and points the
    /// map at it; then retires the journal, which may name the old slices that are free from
    /// now on. Caller holds the commit lock and chunk gate. Returns the volume ranges that
    /// could not be read (written as zeros and recorded lost).
    pub(crate) fn move_chunk(
        &self,
        idx: usize,
        old: &Chunk,
        new: Chunk,
        members: &[Option<Dev>],
        ctl: &JobControl,
        next_txg: Option<u64>,
    ) -> Result<Vec<(u64, u64)>> {
        let mut copied = Copied::default();
        self.copy_chunk(idx, old, &new, members, ctl, &mut copied)?;
        let lost = copied.lost.clone();
        self.commit_moves(copied, members, next_txg)?;
        Ok(lost)
    }

    /// Writes chunk `idx` (now laid out as `old`) anew as `new`, not yet flushed, and adds
    /// it to `copied`. Unreadable blocks are written as zeros and recorded in `copied.lost`.
    fn copy_chunk(
        &self,
        idx: usize,
        old: &Chunk,
        new: &Chunk,
        members: &[Option<Dev>],
        ctl: &JobControl,
        copied: &mut Copied,
    ) -> Result<()> {
        let p = new.profile;
        let rb = p.row_bytes();
        let rows = new.slice_len / p.stripe_unit;
        let mut buf = vec![0u8; rb as usize];
        for row in 0..rows {
            let start = row * rb;
            buf.fill(0);
            let n = (self.chunk_size.saturating_sub(start)).min(rb) as usize;
            if n > 0 && self.read_chunk(idx, old, start, &mut buf[..n]).is_err() {
                // Block by block, so one bad spot loses only itself.
                for (b, blk) in buf[..n].chunks_mut(BLOCK).enumerate() {
                    let co = start + (b * BLOCK) as u64;
                    if self.read_chunk(idx, old, co, blk).is_err() {
                        blk.fill(0);
                        copied
                            .lost
                            .push((idx as u64 * self.chunk_size + co, blk.len() as u64));
                    }
                }
            }
            let segs: Vec<crate::data::Seg> = (0..p.data_count())
                .map(|i| crate::data::Seg {
                    i,
                    col: 0,
                    data: &buf[i * p.stripe_unit as usize..(i + 1) * p.stripe_unit as usize],
                })
                .collect();
            let mut plan = Vec::new();
            self.plan_row(idx, members, new, row, &segs, &mut plan)?;
            crate::member::execute(members, &plan)?;
            // Progress and the rate limit count member bytes written, as a rebuild's do; the
            // caller sleeps for the rate limit once it has let go of its locks.
            ctl.count(p.stripe_unit * new.slices.len() as u64);
            if let Some(cs) = &self.csums {
                for w in &plan {
                    if let Some(d) = &members[w.member as usize] {
                        copied
                            .csum_blocks
                            .entry(w.member)
                            .or_default()
                            .extend(cs.record(w.member, d, w.offset, &w.data));
                    }
                }
            }
        }
        copied.flush.extend(new.slices.iter().map(|s| s.member));
        copied.moved.push((idx, Arc::new(new.clone())));
        Ok(())
    }

    /// Makes the chunks in `copied` count: their checksums written, their new slices
    /// flushed, then one map commit points the chunks there; then the journal, which may name
    /// the old slices (free from now on), is retired before anything can be allocated there.
    /// Caller holds the commit lock and chunk gate.
    fn commit_moves(
        &self,
        copied: Copied,
        members: &[Option<Dev>],
        next_txg: Option<u64>,
    ) -> Result<()> {
        if copied.moved.is_empty() {
            return Ok(());
        }
        self.write_csum_blocks(members, copied.csum_blocks)?;
        flush_some(members, copied.flush)?;
        let mut st = self.store.lock();
        let mut meta = st.meta.clone();
        for (idx, new) in &copied.moved {
            meta.map.chunks[*idx] = Some(new.clone());
        }
        meta.health.lost.extend(copied.lost);
        meta.health.lost = merge_ranges(std::mem::take(&mut meta.health.lost));
        self.commit_meta(&mut st, meta)?;
        drop(st);
        if let Some(next) = next_txg {
            self.retire_journal_at(next)?;
        }
        Ok(())
    }

    /// Starts the reshape by itself when the metadata says one is under way (serve).
    pub(crate) fn kick_reshape(&self) {
        let auto = {
            let jobs = self.jobs.lock();
            if jobs.slot(JobKind::Reshape).running {
                return;
            }
            match &jobs.auto {
                Some(a) => a.clone(),
                None => return,
            }
        };
        if self.read_only || !self.reshape_pending() {
            return;
        }
        (auto.spawn)(JobKind::Reshape, Arc::new(JobControl::new(auto.rate)));
    }

    /// The reshape running now, if any.
    pub fn reshape_job(&self) -> Option<Arc<JobControl>> {
        self.running(JobKind::Reshape)
    }
}
