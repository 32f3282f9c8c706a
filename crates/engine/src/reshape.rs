//! Reshape: level conversion, balance and member evacuation, all as chunk moves. A group
//! of moves writes each chunk's content in its new place, flushes them, and only then does
//! one map commit point the chunks there; the old slices are never written, so a crash
//! leaves the old or the new chunks in force, and the goal (template, `balancing`, members
//! `leaving`) is in the metadata: a restarted array picks up where it stopped. The planner
//! is a pure function of the map, so `plan` runs the very same steps without I/O and its
//! figures are the operation's.

use crate::array::{alloc_candidates, flush_some, member_spaces, Array, Dev};
use crate::rebuild::merge_ranges;
use std::collections::HashMap;

use crate::chunkmap::{Allocator, Chunk, ChunkMap, MemberSpace, Template};
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::jobs::JobControl;
use crate::metadata::{ArrayMeta, MemberState};
use crate::profile::{Level, Profile};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

const BLOCK: usize = 4096;
/// New-slice bytes a reshape group writes before its flush and commit: few enough that
/// writes waiting on the commit lock wait briefly, many enough that the per-commit cost
/// (a flush of every member, the map commit, the journal retire) is shared.
pub(crate) const GROUP_BYTES: u64 = 64 << 20;

/// What the array is being reshaped towards, and where chunks may go.
#[derive(Clone, Debug)]
pub(crate) struct Goal {
    pub template: Template,
    pub leaving: Vec<u16>,
    pub balance: bool,
    /// Members a moved chunk may use: active, present, not leaving.
    pub targets: Vec<u16>,
    /// Members never-written chunks will use (see `alloc_candidates`).
    pub future: Vec<u16>,
}

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

/// One chunk move: `staging` moves it as it is, only to make room on full members.
#[derive(Clone, Debug)]
pub(crate) struct Move {
    pub idx: usize,
    pub to: Chunk,
    pub staging: bool,
}

#[derive(Clone)]
pub(crate) struct Planner {
    pub spaces: Vec<MemberSpace>,
    pub chunk_size: u64,
    pub goal: Goal,
    /// Balancing: bytes per member that a fresh array holding as many chunks would use
    /// (empty otherwise). Moves never change the chunk count, so it holds for a whole plan.
    pub fresh_use: Vec<u64>,
    /// New-slice bytes per group of moves ([`GROUP_BYTES`], or 0: one move per commit).
    pub group_bytes: u64,
}

/// Bytes per member the map's slices take.
fn use_of(map: &ChunkMap, members: usize) -> Vec<u64> {
    let mut used = vec![0u64; members];
    for (_, c) in map.allocated() {
        for s in &c.slices {
            if let Some(u) = used.get_mut(s.member as usize) {
                *u += c.slice_len;
            }
        }
    }
    used
}

impl Planner {
    fn converted(&self, c: &Chunk) -> bool {
        let (p, t) = (&c.profile, &self.goal.template);
        p.level == t.level && p.copies == t.copies && p.stripe_unit == t.stripe_unit
    }

    fn on_leaving(&self, c: &Chunk) -> bool {
        c.slices
            .iter()
            .any(|s| self.goal.leaving.contains(&s.member))
    }

    /// Would the chunk be wider laid out afresh (its own space counted as free)? `free` is
    /// the allocator of the map that holds it: one per pass over the map, not one per chunk
    /// (rebuilding it from the whole map for every chunk made each move cost O(chunks²)).
    fn narrow(&self, free: &Allocator, c: &Chunk) -> bool {
        let mut a = free.clone();
        a.release(c);
        a.allocate(&self.goal.template, self.chunk_size, &self.goal.targets)
            .is_some_and(|n| n.profile.width > c.profile.width)
    }

    /// How far `used` is from a fresh array's use: the bytes members hold beyond it.
    fn overuse(&self, used: &[u64]) -> u64 {
        used.iter()
            .zip(&self.fresh_use)
            .map(|(u, f)| u.saturating_sub(*f))
            .sum()
    }

    /// Whether moving `c` to `to` brings the members' use closer to a fresh array's. Only
    /// strictly closer counts, so balancing by use always ends.
    fn evens_out(&self, used: &[u64], c: &Chunk, to: &Chunk) -> bool {
        let mut after = used.to_vec();
        for s in &c.slices {
            after[s.member as usize] -= c.slice_len;
        }
        for s in &to.slices {
            after[s.member as usize] += to.slice_len;
        }
        self.overuse(&after) < self.overuse(used)
    }

    /// Would the chunk, laid out afresh, leave the members' use closer to a fresh array's?
    /// (Mixed sizes: a full small member keeps slices a fresh array would put on the new
    /// large one, and that space is what the volume needs to grow.) `used`: the map's use
    /// per member (see [`use_of`]).
    fn uneven(&self, free: &Allocator, used: &[u64], c: &Chunk) -> bool {
        if !c
            .slices
            .iter()
            .any(|s| used[s.member as usize] > self.fresh_use[s.member as usize])
        {
            return false;
        }
        let mut a = free.clone();
        a.release(c);
        a.allocate(&self.goal.template, self.chunk_size, &self.goal.targets)
            .is_some_and(|to| self.evens_out(used, c, &to))
    }

    /// Whether `c`, a chunk of the map `free` was made from (and `used` counted), still
    /// wants a move.
    fn wants(&self, free: &Allocator, used: &[u64], c: &Chunk) -> bool {
        !self.converted(c)
            || self.on_leaving(c)
            || (self.goal.balance && (self.narrow(free, c) || self.uneven(free, used, c)))
    }

    /// The chunks of `map` (whose allocator is `free`) that still want a move.
    fn wanting<'m>(&self, map: &'m ChunkMap, free: &Allocator) -> Vec<(usize, &'m Arc<Chunk>)> {
        let used = use_of(map, self.spaces.len());
        map.allocated()
            .filter(|(_, c)| self.wants(free, &used, c))
            .collect()
    }

    /// How many chunks of `map` still want a move.
    pub fn count_wanting(&self, map: &ChunkMap) -> usize {
        self.wanting(map, &Allocator::new(&self.spaces, map)).len()
    }

    /// Whether every never-written chunk still fits in what `a` leaves free.
    fn room(&self, map: &ChunkMap, a: &Allocator) -> bool {
        let unwritten = map.chunks.iter().filter(|c| c.is_none()).count();
        unwritten == 0
            || a.count_fitting(
                &self.goal.template,
                self.chunk_size,
                &self.goal.future,
                unwritten,
            ) >= unwritten
    }

    /// The next group of moves: each the next move on the map with the group's earlier
    /// moves made, but never into their old places (that data is live until the group's
    /// commit). A group ends at `group_bytes` of new slices (0: one move per group); when
    /// nothing more fits beside the pinned places except by staging; at a second move of a
    /// chunk already in it; and after a staging move (its point is the room its commit
    /// frees). Empty when the goal is
    /// reached or nothing more can move. Deterministic, so `plan` and the reshape make the
    /// same groups.
    pub fn next_group(&self, map: &ChunkMap, staged: &HashSet<usize>) -> Vec<Move> {
        let mut map = map.clone();
        let mut pinned: Vec<Arc<Chunk>> = Vec::new();
        let mut moves: Vec<Move> = Vec::new();
        let mut bytes = 0;
        while moves.is_empty() || bytes < self.group_bytes {
            let mut alloc = Allocator::new(&self.spaces, &map);
            for c in &pinned {
                alloc.reserve(c);
            }
            let Some(m) = self.next_in(&map, staged, alloc, moves.is_empty()) else {
                break;
            };
            if moves.iter().any(|x| x.idx == m.idx) {
                break;
            }
            bytes += m.to.slice_len * m.to.slices.len() as u64;
            let old = map.chunks[m.idx].replace(Arc::new(m.to.clone()));
            pinned.extend(old);
            let staging = m.staging;
            moves.push(m);
            if staging {
                break;
            }
        }
        moves
    }

    /// The next move, or `None` when the goal is reached or nothing more can move (or, without
    /// `staging`, when only a staging move would do). `alloc`: the map's free space, less
    /// any pinned slices.
    fn next_in(
        &self,
        map: &ChunkMap,
        staged: &HashSet<usize>,
        alloc: Allocator,
        staging: bool,
    ) -> Option<Move> {
        let work = self.wanting(map, &alloc);
        let used = use_of(map, self.spaces.len());
        for &(idx, c) in &work {
            let mut a = alloc.clone();
            if let Some(to) = a.allocate(&self.goal.template, self.chunk_size, &self.goal.targets) {
                let better = !self.converted(c)
                    || self.on_leaving(c)
                    || to.profile.width > c.profile.width
                    || (self.goal.balance
                        && to.profile.width == c.profile.width
                        && self.evens_out(&used, c, &to));
                if better && self.room(map, &a) {
                    return Some(Move {
                        idx,
                        to,
                        staging: false,
                    });
                }
            }
        }
        if !staging {
            return None;
        }
        // Nothing fits as wanted: move a chunk as it is to the members with the most room,
        // which frees room on the full ones (a full 2-member raid0 going to raid5 over 4).
        // Where its level needs more members with room than there are (a full raid5 on
        // small members and one large new member), it goes as mirrors of the same
        // tolerance: two members with room are enough.
        let set = |c: &Chunk| {
            let mut v: Vec<u16> = c.slices.iter().map(|s| s.member).collect();
            v.sort_unstable();
            v
        };
        for &(idx, c) in &work {
            if staged.contains(&idx) {
                continue;
            }
            let p = c.profile;
            let own = Template {
                level: p.level,
                copies: p.copies,
                stripe_unit: p.stripe_unit,
            };
            let mirrors = Template {
                level: Level::Raid1,
                copies: p.tolerance() + 1,
                stripe_unit: p.stripe_unit,
            };
            let mut ts = vec![own];
            if p.level != Level::Raid1 && p.tolerance() > 0 {
                ts.push(mirrors);
            }
            for t in ts {
                let mut a = alloc.clone();
                if let Some(to) = a.allocate(&t, self.chunk_size, &self.goal.targets) {
                    if set(&to) != set(c) && self.room(map, &a) {
                        return Some(Move {
                            idx,
                            to,
                            staging: true,
                        });
                    }
                }
            }
        }
        None
    }

    /// Runs the plan on a copy of the map: what the reshape will do. Settles the grouping
    /// (see [`Planner::simulate_to`]), so a reshape that goes on with this planner does it.
    pub fn simulate(&mut self, map: &ChunkMap) -> Plan {
        self.simulate_to(map).0
    }

    /// [`Planner::simulate`], and the map as the reshape leaves it. Moves go in groups
    /// unless that leaves chunks stuck that one move per commit would not: a group's pinned
    /// places steer its later moves elsewhere, and on members with little free space that
    /// can fragment it past use (seen in the crash harness: raid5 → raid1 on a half-full
    /// array). Then `group_bytes` becomes 0.
    pub fn simulate_to(&mut self, map: &ChunkMap) -> (Plan, ChunkMap) {
        let grouped = self.run_on_copy(map);
        if grouped.0.stuck > 0 && self.group_bytes > 0 {
            let single = Planner {
                group_bytes: 0,
                ..self.clone()
            };
            let one_by_one = single.run_on_copy(map);
            if one_by_one.0.stuck < grouped.0.stuck {
                self.group_bytes = 0;
                return one_by_one;
            }
        }
        grouped
    }

    /// The moves, group by group, on a copy of `map`: the plan and the map it leaves.
    fn run_on_copy(&self, map: &ChunkMap) -> (Plan, ChunkMap) {
        let mut map = map.clone();
        let mut staged = HashSet::new();
        let mut plan = Plan::default();
        loop {
            let group = self.next_group(&map, &staged);
            if group.is_empty() {
                break;
            }
            for m in group {
                let old = map.chunks[m.idx]
                    .clone()
                    .expect("moves are of allocated chunks");
                plan.count(&m, &old);
                if m.staging {
                    staged.insert(m.idx);
                }
                map.chunks[m.idx] = Some(Arc::new(m.to));
            }
        }
        plan.stuck = self.count_wanting(&map);
        (plan, map)
    }
}

/// What a reshape does (from [`Planner::simulate`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Chunk moves, staging moves included.
    pub moves: usize,
    pub staging_moves: usize,
    /// Member bytes read and written by the moves.
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Chunks that still need a move when it ends (no room for them).
    pub stuck: usize,
}

impl Plan {
    /// Counts one move of `old`.
    fn count(&mut self, m: &Move, old: &Chunk) {
        self.moves += 1;
        self.bytes_read += old.slice_len * old.slices.len() as u64;
        self.bytes_written += m.to.slice_len * m.to.slices.len() as u64;
        if m.staging {
            self.staging_moves += 1;
        }
    }
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
}

impl Array {
    /// The planner for the goal recorded in `meta`.
    pub(crate) fn planner(&self, meta: &ArrayMeta) -> Planner {
        let spaces = member_spaces(&meta.members, self.sb_layout.data_offset);
        let goal = self.goal_of(meta);
        let mut fresh_use = Vec::new();
        if goal.balance {
            fresh_use = vec![0; spaces.len()];
            let mut a = Allocator::new(&spaces, &ChunkMap::new(self.chunk_size, 0));
            for _ in 0..meta.map.allocated().count() {
                let Some(c) = a.allocate(&goal.template, self.chunk_size, &goal.targets) else {
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
                m.state == MemberState::Active && !m.leaving && members[i as usize].is_some()
            })
            .collect();
        Goal {
            template: meta.template,
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
            next.template = t;
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
        Ok(next)
    }

    /// What `change` would do: moves, capacity, tolerance, and why it would be refused.
    pub fn forecast(&self, change: &Change) -> Result<Forecast> {
        let meta = self.state.lock().meta.clone();
        let next = self.with_change(&meta, change)?;
        let mut planner = self.planner(&next);
        let (plan, after) = planner.simulate_to(&next.map);
        let t_before = crate::array::template_tolerance(&meta.template);
        let t_after = crate::array::template_tolerance(&next.template);
        let fit = Allocator::new(&planner.spaces, &ChunkMap::new(self.chunk_size, 0))
            .count_fitting(
                &next.template,
                self.chunk_size,
                &planner.goal.targets,
                u32::MAX as usize,
            );
        let capacity_after = fit as u64 * self.chunk_size;
        let mut refusals = Vec::new();
        let mut warnings = Vec::new();
        if capacity_after < self.size() {
            refusals.push(format!(
                "the members left can hold {capacity_after} bytes as {}, less than the volume's {} bytes: add members first",
                next.template.level,
                self.size()
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
        if self.health() != crate::array::Health::Ok {
            warnings.push("the array is not healthy: a rebuild may be needed first".into());
        }
        let size_after = if next.grow_after && plan.stuck == 0 {
            let mut end = next.clone();
            end.map = after;
            self.grow_after_reshape(&mut end)
                .map_or(self.size(), |(_, to)| to)
        } else {
            self.size()
        };
        Ok(Forecast {
            plan,
            tolerance_before: t_before,
            tolerance_after: t_after,
            size: self.size(),
            capacity_after,
            size_after,
            refusals,
            warnings,
        })
    }

    /// Records `change` as the array's goal (after checking it, see [`Array::forecast`]);
    /// [`Array::reshape`] then moves the chunks. Lowering redundancy needs `force`.
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
        let _commit = self.cache.next_txg.lock();
        let mut st = self.state.lock();
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
        let meta = self.state.lock().meta.clone();
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
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        {
            let mut j = self.jobs.lock();
            if j.reshape_running {
                return Err(Error::Invalid("a reshape is already running".into()));
            }
            j.reshape_running = true;
            j.reshape = Some(ctl.clone());
        }
        struct Running<'a>(&'a Array);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.jobs.lock().reshape_running = false;
            }
        }
        let _running = Running(self);
        let (forecast, group_bytes) = {
            let meta = self.state.lock().meta.clone();
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
            let commits = self.journal.as_ref().map(|_| self.cache.next_txg.lock());
            let next_txg = commits.as_ref().map(|g| **g);
            let _direct = self.chunk_gate.write();
            // Planned on a copy, off the state lock that reads take (a group under a balance
            // goal costs a pass over the map per move); the locks held keep the map as is.
            let meta = self.state.lock().meta.clone();
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
        let _commit = self.cache.next_txg.lock();
        let mut st = self.state.lock();
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
            let count = meta.map.chunks.len();
            self.commit_meta(&mut st, meta)?;
            self.chunks.write().resize(count, None);
            let mut avail = (*self.members()).clone();
            for &i in &gone {
                avail[i] = None;
            }
            *self.avail.write() = Arc::new(avail);
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
            let segs: Vec<crate::io::Seg> = (0..p.data_count())
                .map(|i| crate::io::Seg {
                    i,
                    col: 0,
                    data: &buf[i * p.stripe_unit as usize..(i + 1) * p.stripe_unit as usize],
                })
                .collect();
            let mut plan = Vec::new();
            self.plan_row(idx, members, new, row, &segs, &mut plan)?;
            crate::io::execute(members, &plan)?;
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
        let mut st = self.state.lock();
        let mut meta = st.meta.clone();
        for (idx, new) in &copied.moved {
            meta.map.chunks[*idx] = Some(new.clone());
        }
        meta.health.lost.extend(copied.lost);
        meta.health.lost = merge_ranges(std::mem::take(&mut meta.health.lost));
        self.commit_meta(&mut st, meta)?;
        {
            let mut chunks = self.chunks.write();
            for (idx, new) in copied.moved {
                chunks[idx] = Some(new);
            }
        }
        drop(st);
        if let Some(next) = next_txg {
            self.retire_journal_at(next)?;
        }
        Ok(())
    }

    /// Starts the reshape by itself when the metadata says one is under way (serve).
    pub(crate) fn kick_reshape(&self) {
        let (weak, rate) = {
            let jobs = self.jobs.lock();
            if jobs.reshape_running {
                return;
            }
            match &jobs.auto {
                Some((w, r)) => (w.clone(), *r),
                None => return,
            }
        };
        if self.read_only || !self.reshape_pending() {
            return;
        }
        let Some(me) = weak.upgrade() else { return };
        let ctl = Arc::new(JobControl::new(rate));
        std::thread::Builder::new()
            .name("damocles-reshape".into())
            .spawn(move || {
                if let Err(e) = me.reshape(ctl) {
                    tracing::error!("reshape failed: {e}");
                }
            })
            .ok();
    }

    /// The reshape running now, if any.
    pub fn reshape_job(&self) -> Option<Arc<JobControl>> {
        let j = self.jobs.lock();
        j.reshape_running.then(|| j.reshape.clone()).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkmap::Slice;
    use crate::profile::Level;

    const MIB: u64 = 1 << 20;

    /// Two members filled to the last byte by raid0, two empty ones: going to raid5 over
    /// four needs chunks moved aside first, and then everything converts.
    #[test]
    fn a_full_raid0_is_converted_by_making_room_first() {
        let spaces: Vec<MemberSpace> = (0..4)
            .map(|m| MemberSpace {
                member: m,
                start: 0,
                end: 5 * MIB,
            })
            .collect();
        let raid0 = Profile {
            level: Level::Raid0,
            width: 2,
            copies: 1,
            stripe_unit: 64 << 10,
        };
        let mut map = ChunkMap::new(MIB, 10);
        for i in 0..10u64 {
            map.chunks[i as usize] = Some(Arc::new(Chunk {
                profile: raid0,
                slice_len: MIB / 2,
                slices: (0..2)
                    .map(|m| Slice {
                        member: m,
                        offset: i * MIB / 2,
                    })
                    .collect(),
            }));
        }
        let goal = Goal {
            template: Template {
                level: Level::Raid5,
                copies: 1,
                stripe_unit: 64 << 10,
            },
            leaving: vec![],
            balance: false,
            targets: vec![0, 1, 2, 3],
            future: vec![0, 1, 2, 3],
        };
        let mut p = Planner {
            spaces,
            chunk_size: MIB,
            goal,
            fresh_use: Vec::new(),
            group_bytes: GROUP_BYTES,
        };
        let plan = p.simulate(&map);
        assert_eq!(plan.stuck, 0, "{plan:?}");
        assert!(plan.staging_moves > 0, "{plan:?}");
        assert_eq!(plan.moves, 10 + plan.staging_moves, "{plan:?}");
    }
}
