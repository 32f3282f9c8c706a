//! Rebuild: every chunk slice on a member that is gone (or being replaced) is recreated on
//! a hot spare, the replacement, or free space on the other members (distributed rebuild),
//! chunk by chunk (the rows of each spread over a few threads). A chunk's new slice is
//! written and flushed before the map commit that points to it, so the map is the
//! checkpoint: a restart resumes with the chunks not yet moved, and a crash at any point
//! leaves the old (degraded) or the new slice in force.

use super::JobControl;
use super::Jobs;
use crate::data::{Need, Scratch};
use crate::error::JobKind;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::layout::chunkmap::{Allocator, Chunk, MemberSpace, Slice};
use crate::member::{write, Dev, Usable};
use crate::ondisk::metadata::MemberState;
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::layout::stripe::data_volume_offset;
use crate::units::{merge_ranges, BLOCK_LEN as BLOCK};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub chunks_rebuilt: usize,
    pub bytes: u64,
    /// Chunks that still need a place to go (no spare, no free space).
    pub chunks_stuck: usize,
    /// Volume ranges lost because another member failed to read during the rebuild.
    pub lost: Vec<(u64, u64)>,
}

/// Threads that rebuild rows at once (at most; the machine's cores if fewer).
const MAX_REBUILD_THREADS: usize = 4;

/// One batch of rows of one new slice: rows `row..row + n` of position `pos` of chunk `idx`,
/// to be written to `target`.
struct Job {
    idx: usize,
    chunk: Arc<Chunk>,
    members: Usable,
    pos: usize,
    need: Need,
    target: Slice,
    row: u64,
    n: u64,
}

/// What jobs found: checksum blocks touched per member, volume ranges that could not be
/// rebuilt.
#[derive(Default)]
struct Found {
    csum_blocks: HashMap<u16, Vec<u64>>,
    lost: Vec<(u64, u64)>,
}

/// The batches of the current group, shared by the rebuild threads, and what they found.
#[derive(Default)]
struct PipeState {
    queue: VecDeque<Job>,
    /// Jobs queued or running.
    pending: usize,
    /// No more jobs: the threads end.
    closed: bool,
    /// What the jobs done found (written before the group's flush).
    found: Found,
    /// The first failure (the group is then not committed).
    error: Option<Error>,
}

#[derive(Default)]
struct Pipe {
    st: Mutex<PipeState>,
    cv: Condvar,
}

/// Ends the rebuild threads however the loop that feeds them ends.
struct ClosePipe<'a>(&'a Pipe);

impl Drop for ClosePipe<'_> {
    fn drop(&mut self) {
        self.0.st.lock().closed = true;
        self.0.cv.notify_all();
    }
}

/// Counts a job done even if it panics.
struct JobDone<'a> {
    pipe: &'a Pipe,
    result: Option<(Found, Result<()>)>,
}

impl Drop for JobDone<'_> {
    fn drop(&mut self) {
        let mut st = self.pipe.st.lock();
        match self.result.take() {
            Some((found, r)) => {
                for (m, v) in found.csum_blocks {
                    st.found.csum_blocks.entry(m).or_default().extend(v);
                }
                st.found.lost.extend(found.lost);
                if let Err(e) = r {
                    st.error.get_or_insert(e);
                }
            }
            None => {
                st.error
                    .get_or_insert(Error::Invalid("a rebuild thread panicked".into()));
            }
        }
        st.pending -= 1;
        drop(st);
        self.pipe.cv.notify_all();
    }
}

/// Chunks moved but not yet committed (see `Jobs::rebuild`).
#[derive(Default)]
struct Group {
    /// The map the allocator sees: the committed one plus every new slice of the group.
    alloc_map: crate::layout::chunkmap::ChunkMap,
    /// Free space left by `alloc_map` on the members as they were (kept from chunk to
    /// chunk: deriving it from the map is linear in the map's size).
    alloc: Option<(Vec<MemberSpace>, Allocator)>,
    moved: Vec<(usize, Arc<Chunk>)>,
    lost: Vec<(u64, u64)>,
    flush: Vec<u16>,
}

enum Step {
    Moved,
    /// Nowhere to put it (or not readable).
    Stuck,
    /// No member outside the chunk has room: re-lay it over the members left.
    Relocate(Arc<Chunk>),
}

impl Jobs {
    /// Starts a rebuild if one is needed and the array rebuilds by itself.
    pub(crate) fn kick_rebuild(&self) {
        if self.jobs.lock().auto.is_none() {
            return;
        }
        // A spare takes over at once, even while a rebuild for an earlier failure runs.
        if let Err(e) = self.assign_spares() {
            tracing::warn!("could not assign a hot spare: {e}");
        }
        let auto = {
            let mut jobs = self.jobs.lock();
            if jobs.rebuild_running {
                // The running one may have looked already: it starts another when it ends.
                jobs.rebuild_pending = true;
                return;
            }
            match &jobs.auto {
                Some(a) => a.clone(),
                None => return,
            }
        };
        // A spare that took over from a failed member holding nothing has no data to
        // rebuild, but the rebuild's end still makes it a member in the failed one's place.
        if !self.rebuild_possible() && !self.replacement_to_finish() {
            return;
        }
        (auto.spawn)(JobKind::Rebuild, Arc::new(JobControl::new(auto.rate)));
    }

    /// The rebuild running now, if any.
    pub fn rebuild_job(&self) -> Option<Arc<JobControl>> {
        let j = self.jobs.lock();
        j.rebuild_running.then(|| j.rebuild.clone()).flatten()
    }

    /// What each slice of `c` needs. Only members known to be failed (or removed) are
    /// rebuilt: a member that is merely absent may come back.
    fn needs(&self, c: &Chunk, failed: &[bool], replacing: &[(u16, u16)]) -> Vec<Need> {
        c.slices
            .iter()
            .map(|s| {
                if failed[s.member as usize] {
                    Some(Need::Reconstruct)
                } else {
                    replacing
                        .iter()
                        .find(|(old, _)| *old == s.member)
                        .map(|(_, to)| Need::Copy { to: *to })
                }
            })
            .map(|n| n.unwrap_or(Need::Copy { to: u16::MAX }))
            .collect()
    }

    /// (old, new) pairs of replacements in progress whose new member is present.
    fn replacements(&self) -> Vec<(u16, u16)> {
        let members = self.members();
        let st = self.store.lock();
        st.meta
            .members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let old = m.replaces?;
                members[i].as_ref()?;
                Some((old, i as u16))
            })
            .collect()
    }

    /// Whether a replacement (a spare that took over, or `replace`) has nothing left to
    /// copy: its old member holds no slice any more.
    fn replacement_to_finish(&self) -> bool {
        let members = self.members();
        let st = self.store.lock();
        let meta = &st.meta;
        meta.members.iter().enumerate().any(|(i, m)| {
            m.replaces.is_some_and(|old| {
                members[i].is_some()
                    && meta.members[old as usize].state != MemberState::Removed
                    && !meta
                        .map
                        .allocated()
                        .any(|(_, c)| c.slices.iter().any(|s| s.member == old))
            })
        })
    }

    /// Per member: failed or removed (so its slices are rebuilt elsewhere). A member that is
    /// only missing is not: it may come back, until `damocles fail` or `rebuild` says not.
    fn failed_members(&self) -> Vec<bool> {
        let members = self.members();
        let st = self.store.lock();
        st.meta
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                members[i].is_none()
                    && (m.state == MemberState::Removed
                        || (m.state == MemberState::Faulty && m.failed))
            })
            .collect()
    }

    /// Chunks with a slice that a rebuild would move (and can: still readable).
    pub(crate) fn rebuild_work(&self) -> Vec<usize> {
        let members = self.members();
        let failed = self.failed_members();
        let replacing = self.replacements();
        let st = self.store.lock();
        st.meta
            .map
            .allocated()
            .filter(|(_, c)| {
                crate::meta::chunk_intact(c, &members)
                    && self
                        .needs(c, &failed, &replacing)
                        .iter()
                        .any(|n| *n != Need::Copy { to: u16::MAX })
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Chunks with a slice on a member that is gone.
    pub fn chunks_degraded(&self) -> usize {
        let members = self.members();
        let st = self.store.lock();
        st.meta
            .map
            .allocated()
            .filter(|(_, c)| {
                c.slices
                    .iter()
                    .any(|s| members[s.member as usize].is_none())
            })
            .count()
    }

    fn rebuild_possible(&self) -> bool {
        !self.read_only && !self.rebuild_work().is_empty()
    }

    /// Rebuilds every chunk that has a slice on a failed, missing or replaced member: a
    /// member that is missing now is declared failed first (it will not be waited for).
    /// Runs while I/O is served; resumable (each group of chunks is committed on its own).
    pub fn rebuild(&self, ctl: Arc<JobControl>) -> Result<RebuildReport> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.declare_missing_failed()?;
        self.run_rebuild(ctl)
    }

    /// Records every member that is missing now as failed.
    fn declare_missing_failed(&self) -> Result<()> {
        let members = self.members();
        let mut st = self.store.lock();
        let mut meta = st.meta.clone();
        let mut declared = Vec::new();
        for (i, m) in meta.members.iter_mut().enumerate() {
            if members[i].is_none()
                && matches!(m.state, MemberState::Active | MemberState::Faulty)
                && !m.failed
            {
                m.state = MemberState::Faulty;
                m.failed = true;
                declared.push(i);
            }
        }
        if declared.is_empty() {
            return Ok(());
        }
        if members.iter().all(Option::is_none) {
            return Err(Error::Unavailable("no member is available".into()));
        }
        self.commit_meta(&mut st, meta)?;
        drop(st);
        for i in declared {
            self.emit(
                EventKind::MemberFailed,
                Some(i),
                None,
                format!("member {i} is missing and now counted as failed: the rebuild replaces it"),
            );
        }
        Ok(())
    }

    /// The rebuild proper: what `rebuild` does once every member it replaces is failed.
    pub(crate) fn run_rebuild(&self, ctl: Arc<JobControl>) -> Result<RebuildReport> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        {
            let mut j = self.jobs.lock();
            if j.rebuild_running {
                return Err(Error::Busy(JobKind::Rebuild));
            }
            j.rebuild_running = true;
            j.rebuild = Some(ctl.clone());
        }
        struct Running<'a>(&'a Jobs);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                let again = {
                    let mut j = self.0.jobs.lock();
                    j.rebuild_running = false;
                    std::mem::take(&mut j.rebuild_pending)
                };
                if again {
                    self.0.kick_rebuild();
                }
            }
        }
        let _running = Running(self);
        self.assign_spares()?;
        let work = self.rebuild_work();
        let mut report = RebuildReport::default();
        if work.is_empty() {
            self.finish_rebuild()?;
            return Ok(report);
        }
        let total_chunks = self.store.lock().meta.map.allocated().count();
        // Bytes of slices to write: what progress counts.
        // Fresh each time: a member may fail while the rebuild runs.
        let slice_bytes = |i: usize| {
            let failed = self.failed_members();
            let replacing = self.replacements();
            self.store.chunk(i).as_ref().map_or(0, |c| {
                let moving = self
                    .needs(c, &failed, &replacing)
                    .iter()
                    .filter(|n| **n != Need::Copy { to: u16::MAX })
                    .count() as u64;
                c.slice_len * moving.max(1)
            })
        };
        let total: u64 = work.iter().map(|&i| slice_bytes(i)).sum();
        ctl.set_total(total);
        self.emit(
            EventKind::RebuildStarted,
            None,
            None,
            format!(
                "rebuild started: {} of {total_chunks} chunks, {total} bytes",
                work.len()
            ),
        );
        // Chunks move in groups (up to half a second or 256 MiB of slices): one flush and
        // one map commit per group, not per chunk. Commits wait while a group moves.
        // The rows of each chunk are rebuilt by a few threads (this one included) while the
        // next chunks are placed; a group waits for all of them before its flush and commit.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_REBUILD_THREADS);
        // Jobs queued ahead of the threads (about 1 MiB each) before this one lends a hand.
        let ahead = if threads > 1 { 2 * threads } else { 0 };
        let pipe = Pipe::default();
        let mut scratch = Scratch::default();
        std::thread::scope(|s| -> Result<()> {
            let _close = ClosePipe(&pipe);
            for _ in 1..threads {
                let (pipe, ctl) = (&pipe, &*ctl);
                s.spawn(move || self.rebuild_thread(pipe, ctl));
            }
            let mut i = 0;
            let mut work = work;
            let mut passes_done = 0;
            while i < work.len() && !ctl.is_cancelled() {
                let commits = self.journal.as_ref().map(|_| self.cache.next_txg.lock());
                let next_txg = commits.as_ref().map(|g| **g);
                let _direct = self.chunk_gate.write();
                let mut group = Group {
                    alloc_map: self.store.lock().meta.map.clone(),
                    ..Default::default()
                };
                let started = std::time::Instant::now();
                let mut bytes = 0;
                while i < work.len()
                    && !ctl.is_cancelled()
                    && started.elapsed() < std::time::Duration::from_millis(500)
                    && bytes < 256 << 20
                {
                    let idx = work[i];
                    i += 1;
                    let n = slice_bytes(idx);
                    match self.rebuild_chunk(idx, &pipe, &mut group)? {
                        Step::Moved => {
                            report.chunks_rebuilt += 1;
                            report.bytes += n;
                            bytes += n;
                        }
                        Step::Stuck => report.chunks_stuck += 1,
                        Step::Relocate(chunk) => {
                            // Relocation commits on its own; the group so far goes first.
                            self.finish_jobs(&pipe, &mut scratch, &ctl, &mut group)?;
                            self.commit_group(std::mem::take(&mut group), &mut report)?;
                            let members = self.members();
                            match self.relocate_chunk(idx, &chunk, &members, &ctl, next_txg)? {
                                Some(lost) => {
                                    report.chunks_rebuilt += 1;
                                    report.bytes += n;
                                    report.lost.extend(lost);
                                }
                                None => report.chunks_stuck += 1,
                            }
                            group.alloc_map = self.store.lock().meta.map.clone();
                        }
                    }
                    self.drain_jobs(&pipe, ahead, &mut scratch, &ctl)?;
                }
                self.finish_jobs(&pipe, &mut scratch, &ctl, &mut group)?;
                self.commit_group(group, &mut report)?;
                // Relocations count without sleeping: the rate limit waits here, unlocked.
                drop(_direct);
                drop(commits);
                ctl.throttle();
                if i == work.len() && !ctl.is_cancelled() {
                    // Chunks allocated meanwhile (born degraded) or a member that failed
                    // during the pass: go on with them, as long as the last pass got
                    // somewhere.
                    let before = report.chunks_rebuilt;
                    let more = self.rebuild_work();
                    if !more.is_empty() && before > passes_done {
                        passes_done = before;
                        self.assign_spares()?;
                        let extra: u64 = more.iter().map(|&c| slice_bytes(c)).sum();
                        ctl.set_total(ctl.progress().total + extra);
                        work = more;
                        i = 0;
                    }
                }
            }
            Ok(())
        })?;
        if !ctl.is_cancelled() {
            // Estimates made before the work was seen end at what it really was: 100%.
            ctl.set_total(ctl.progress().done);
            self.finish_rebuild()?;
        }
        let msg = format!(
            "rebuild {}: {} chunks, {} bytes{}{}",
            if ctl.is_cancelled() {
                "stopped"
            } else {
                "finished"
            },
            report.chunks_rebuilt,
            report.bytes,
            if report.chunks_stuck > 0 {
                format!(
                    "; {} chunks have nowhere to go (add a spare)",
                    report.chunks_stuck
                )
            } else {
                String::new()
            },
            if report.lost.is_empty() {
                String::new()
            } else {
                format!("; {} ranges lost", report.lost.len())
            }
        );
        self.emit(EventKind::RebuildFinished, None, None, msg);
        Ok(report)
    }

    /// Gives each failed member that still holds slices a hot spare of its own (the
    /// smallest one at least as large, else the largest), recorded as its replacement: one
    /// failure takes one spare.
    fn assign_spares(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let failed = self.failed_members();
        let members = self.members();
        let mut st = self.store.lock();
        let mut meta = st.meta.clone();
        let n = meta.members.len();
        let holds: Vec<bool> = (0..n).map(|i| meta.map.used_on(i) > 0).collect();
        let mut assigned = Vec::new();
        for f in 0..n {
            // A failed member needs a spare while it holds data, and also once a rebuild
            // into free space has moved its data but could not remove it (it still counts
            // for the volume not written yet: `status` asks for a spare then).
            let counted = meta.members[f].state == MemberState::Faulty;
            if !failed[f]
                || !(holds[f] || counted)
                || meta.members.iter().any(|o| o.replaces == Some(f as u16))
            {
                continue;
            }
            let spares: Vec<usize> = (0..n)
                .filter(|&i| {
                    let m = &meta.members[i];
                    m.state == MemberState::Spare && m.replaces.is_none() && members[i].is_some()
                })
                .collect();
            let size = |i: usize| meta.members[i].size;
            let need = size(f);
            let Some(spare) = spares
                .iter()
                .copied()
                .filter(|&i| size(i) >= need)
                .min_by_key(|&i| size(i))
                .or_else(|| spares.iter().copied().max_by_key(|&i| size(i)))
            else {
                break;
            };
            meta.members[spare].replaces = Some(f as u16);
            assigned.push((spare, f));
        }
        if assigned.is_empty() {
            return Ok(());
        }
        self.commit_meta(&mut st, meta)?;
        drop(st);
        for (spare, f) in assigned {
            self.emit(
                EventKind::SpareActivated,
                Some(spare),
                None,
                format!("hot spare {spare} takes over from failed member {f}"),
            );
        }
        Ok(())
    }

    /// After a rebuild: members that are gone or replaced and hold nothing any more leave
    /// the array; spares that took data become active; replacements are done.
    fn finish_rebuild(&self) -> Result<()> {
        let members = self.members();
        let mut st = self.store.lock();
        let mut meta = st.meta.clone();
        let holds = |i: usize| meta.map.used_on(i) > 0;
        let mut leaving = Vec::new();
        for i in 0..meta.members.len() {
            let m = &meta.members[i];
            let replaced = meta.members.iter().any(|o| o.replaces == Some(i as u16));
            let gone = members[i].is_none() && m.state == MemberState::Faulty && m.failed;
            if (gone || replaced) && !holds(i) && m.state != MemberState::Removed {
                leaving.push((i, replaced));
            }
        }
        if leaving.is_empty() {
            return Ok(());
        }
        let apply = |meta: &mut crate::ondisk::metadata::ArrayMeta, leaving: &[(usize, bool)]| {
            for &(i, _) in leaving {
                meta.members[i].state = MemberState::Removed;
                for o in meta.members.iter_mut() {
                    if o.replaces == Some(i as u16) {
                        o.replaces = None;
                        if o.state == MemberState::Spare {
                            o.state = MemberState::Active;
                        }
                    }
                }
            }
        };
        let mut after = meta.clone();
        apply(&mut after, &leaving);
        let spaces = crate::meta::member_spaces(&after.members, self.sb_layout.data_offset);
        let alloc = Allocator::new(&spaces, &after.map);
        if !self.room_for_unwritten(
            &alloc,
            &after.template,
            &crate::meta::alloc_candidates(&after),
        ) {
            // The volume not written yet needs a failed member's space (new chunks are born
            // degraded there): it stays, and the array says it needs a spare.
            leaving.retain(|&(_, replaced)| replaced);
            if leaving.is_empty() {
                return Ok(());
            }
        }
        apply(&mut meta, &leaving);
        let mut avail = (*members).clone();
        for (i, _) in &leaving {
            avail[*i] = None;
        }
        self.set.set_usable(Arc::new(avail));
        self.commit_meta(&mut st, meta)?;
        Ok(())
    }

    /// Places the new slices of one chunk and hands the writing of them to the rebuild
    /// threads (caller holds the commit lock and chunk gate); the group's commit makes them
    /// count, once the threads are done with them.
    fn rebuild_chunk(&self, idx: usize, pipe: &Pipe, group: &mut Group) -> Result<Step> {
        let Some(chunk) = self.store.chunk(idx) else {
            return Ok(Step::Moved);
        };
        let members = self.members();
        if !crate::meta::chunk_intact(&chunk, &members) {
            return Ok(Step::Stuck);
        }
        let failed = self.failed_members();
        let replacing = self.replacements();
        let needs = self.needs(&chunk, &failed, &replacing);
        // Choose a target for each slice that must move.
        let leaving: Vec<u16> = replacing.iter().map(|(old, _)| *old).collect();
        let (spaces, template, future) = {
            let st = self.store.lock();
            (
                crate::meta::member_spaces(&st.meta.members, self.sb_layout.data_offset),
                st.meta.template,
                crate::meta::alloc_candidates(&st.meta),
            )
        };
        // Slices placed earlier in the group are taken; slices they replace stay taken
        // until the group's commit (their data is live until then).
        let mut alloc = match &group.alloc {
            Some((sp, a)) if *sp == spaces => a.clone(),
            _ => Allocator::new(&spaces, &group.alloc_map),
        };
        let in_chunk: Vec<u16> = chunk.slices.iter().map(|s| s.member).collect();
        let mut targets: Vec<Option<Slice>> = vec![None; chunk.slices.len()];
        let mut taken: Vec<u16> = Vec::new();
        let mut distributed = false;
        let actives: Vec<u16> = {
            let st = self.store.lock();
            st.meta
                .members
                .iter()
                .enumerate()
                .filter(|(i, m)| {
                    m.state == MemberState::Active
                        && !m.leaving
                        && members[*i].is_some()
                        && !leaving.contains(&(*i as u16))
                })
                .map(|(i, _)| i as u16)
                .collect()
        };
        for (pos, need) in needs.iter().enumerate() {
            let candidates: Vec<u16> = match need {
                Need::Copy { to } if *to == u16::MAX => continue,
                Need::Copy { to } => vec![*to],
                Need::Reconstruct => {
                    let from = chunk.slices[pos].member;
                    match replacing.iter().find(|(old, _)| *old == from) {
                        // The spare (or replacement) that took this member's place.
                        Some(&(_, to)) => vec![to],
                        None => {
                            distributed = true;
                            actives
                                .iter()
                                .copied()
                                .filter(|m| !in_chunk.contains(m) && !taken.contains(m))
                                .collect()
                        }
                    }
                }
            };
            if let Some(s) = alloc.allocate_slice(chunk.slice_len, &candidates) {
                taken.push(s.member);
                targets[pos] = Some(s);
            } else if matches!(need, Need::Reconstruct) {
                // Every member with room is already in the chunk: lay it out anew over
                // the members that are left (narrower, same level), if it fits.
                return Ok(Step::Relocate(chunk));
            } else {
                return Err(Error::NoSpace(format!(
                    "replacement member has no room for chunk {idx}"
                )));
            }
        }
        // Free space is only free if the part of the volume never written yet still fits
        // after the move: the size the array promised its users comes first.
        if distributed && !self.room_for_unwritten(&alloc, &template, &future) {
            return Ok(Step::Stuck);
        }
        // Rows in batches of about 1 MiB per member: one read per source per batch.
        let su = chunk.profile.stripe_unit;
        let rows = chunk.slice_len / su;
        let batch = ((1u64 << 20) / su).max(1);
        let mut jobs = Vec::new();
        for (pos, t) in targets.iter().enumerate() {
            let Some(t) = t else { continue };
            let mut row = 0;
            while row < rows {
                let n = batch.min(rows - row);
                jobs.push(Job {
                    idx,
                    chunk: chunk.clone(),
                    members: members.clone(),
                    pos,
                    need: needs[pos],
                    target: *t,
                    row,
                    n,
                });
                row += n;
            }
        }
        {
            let mut st = pipe.st.lock();
            st.pending += jobs.len();
            st.queue.extend(jobs);
        }
        pipe.cv.notify_all();
        let mut new = (*chunk).clone();
        for (pos, t) in targets.iter().enumerate() {
            if let Some(t) = t {
                new.slices[pos] = *t;
                group.flush.push(t.member);
            }
        }
        let new = Arc::new(new);
        group.alloc_map.chunks.push(Some(new.clone()));
        group.alloc = Some((spaces, alloc));
        group.moved.push((idx, new));
        Ok(Step::Moved)
    }

    /// Makes a group of moved chunks count: flush their new slices, then one map commit.
    fn commit_group(&self, group: Group, report: &mut RebuildReport) -> Result<()> {
        if group.moved.is_empty() {
            return Ok(());
        }
        crate::member::flush_some(&self.members(), group.flush)?;
        let mut lost = group.lost;
        lost.sort_unstable();
        let mut st = self.store.lock();
        let mut meta = st.meta.clone();
        for (idx, new) in &group.moved {
            meta.map.chunks[*idx] = Some(new.clone());
        }
        for &(o, l) in &lost {
            self.tel
                .counters
                .unrecoverable
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            meta.health.lost.push((o, l));
        }
        meta.health.lost = merge_ranges(std::mem::take(&mut meta.health.lost));
        self.commit_meta(&mut st, meta)?;
        drop(st);
        for &(o, l) in &lost {
            self.emit(
                EventKind::Unrecoverable,
                None,
                Some(o),
                format!("{l} bytes at volume offset {o} could not be rebuilt and are lost"),
            );
        }
        report.lost.extend(lost);
        Ok(())
    }

    /// Rewrites chunk `idx` as a new chunk of the same level over the present, working
    /// members (as wide as they allow), then points the map at it. Used when a failed
    /// member's slice has nowhere else to go. Caller holds the commit lock and chunk gate.
    fn relocate_chunk(
        &self,
        idx: usize,
        old: &Chunk,
        members: &[Option<Dev>],
        ctl: &JobControl,
        next_txg: Option<u64>,
    ) -> Result<Option<Vec<(u64, u64)>>> {
        let leaving: Vec<u16> = self.replacements().iter().map(|(old, _)| *old).collect();
        let (spaces, map, template, candidates, array_template, future) = {
            let st = self.store.lock();
            let candidates: Vec<u16> = st
                .meta
                .members
                .iter()
                .enumerate()
                .filter(|(i, m)| {
                    matches!(m.state, MemberState::Active | MemberState::Spare)
                        && m.replaces.is_none()
                        && !m.leaving
                        && members[*i].is_some()
                        && !leaving.contains(&(*i as u16))
                })
                .map(|(i, _)| i as u16)
                .collect();
            let mut t = st.meta.template;
            t.level = old.profile.level;
            t.copies = old.profile.copies;
            t.stripe_unit = old.profile.stripe_unit;
            (
                crate::meta::member_spaces(&st.meta.members, self.sb_layout.data_offset),
                st.meta.map.clone(),
                t,
                candidates,
                st.meta.template,
                crate::meta::alloc_candidates(&st.meta),
            )
        };
        // The old slices stay allocated in `map` until the commit: the new chunk never
        // overlaps them.
        let mut alloc = Allocator::new(&spaces, &map);
        let Some(new) = alloc.allocate(&template, self.chunk_size, &candidates) else {
            return Ok(None);
        };
        if !self.room_for_unwritten(&alloc, &array_template, &future) {
            return Ok(None);
        }
        let lost = self.move_chunk(idx, old, new, members, ctl, next_txg)?;
        Ok(Some(lost))
    }

    /// A rebuild thread: runs jobs until the pipe closes.
    fn rebuild_thread(&self, pipe: &Pipe, ctl: &JobControl) {
        let mut scratch = Scratch::default();
        loop {
            let job = {
                let mut st = pipe.st.lock();
                loop {
                    if st.closed {
                        return;
                    }
                    if let Some(j) = st.queue.pop_front() {
                        break j;
                    }
                    pipe.cv.wait(&mut st);
                }
            };
            self.run_job(pipe, &job, &mut scratch, ctl);
        }
    }

    /// Runs queued jobs here too until at most `left` are pending (queued or running
    /// elsewhere); the first failure of any of them, if there was one.
    fn drain_jobs(
        &self,
        pipe: &Pipe,
        left: usize,
        scratch: &mut Scratch,
        ctl: &JobControl,
    ) -> Result<()> {
        let mut st = pipe.st.lock();
        while st.pending > left {
            if let Some(job) = st.queue.pop_front() {
                drop(st);
                self.run_job(pipe, &job, scratch, ctl);
                st = pipe.st.lock();
            } else {
                pipe.cv.wait(&mut st);
            }
        }
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for every job of the group, then writes the checksum blocks they touched (the
    /// group's flush makes them durable with the data).
    fn finish_jobs(
        &self,
        pipe: &Pipe,
        scratch: &mut Scratch,
        ctl: &JobControl,
        group: &mut Group,
    ) -> Result<()> {
        self.drain_jobs(pipe, 0, scratch, ctl)?;
        let found = std::mem::take(&mut pipe.st.lock().found);
        self.write_csum_blocks(&self.members(), found.csum_blocks)?;
        group.lost.extend(found.lost);
        Ok(())
    }

    /// Rebuilds the rows of `job` and writes them to its target, under their row locks;
    /// records their checksums and what could not be rebuilt in the pipe.
    fn run_job(&self, pipe: &Pipe, job: &Job, scratch: &mut Scratch, ctl: &JobControl) {
        let mut done = JobDone { pipe, result: None };
        let mut found = Found::default();
        let failed = pipe.st.lock().error.is_some();
        let r = if failed {
            // The group will not be committed: nothing left to do.
            Ok(())
        } else {
            let r = self.write_rows(job, scratch, &mut found);
            if r.is_ok() {
                ctl.advance(job.n * job.chunk.profile.stripe_unit);
            }
            r
        };
        done.result = Some((found, r));
    }

    /// The work of `run_job`: rebuilds (verified sources, per-block fallback) and writes.
    fn write_rows(&self, job: &Job, scratch: &mut Scratch, found: &mut Found) -> Result<()> {
        let Job {
            idx,
            ref chunk,
            ref members,
            pos,
            need,
            target: t,
            row,
            n,
        } = *job;
        let su = chunk.profile.stripe_unit;
        let dst = members[t.member as usize]
            .as_ref()
            .expect("targets are present");
        let _g: Vec<_> = (row..row + n)
            .map(|r| self.locks.lock(idx as u32, r))
            .collect();
        let mut buf = std::mem::take(&mut scratch.out);
        buf.resize((n * su) as usize, 0);
        let done = self.rebuild_rows(chunk, members, pos, need, row, &mut buf, scratch);
        for (k, rbuf) in buf.chunks_mut(su as usize).enumerate() {
            let r = row + k as u64;
            // Rows the fast path could not do, block by block: only what cannot be
            // rebuilt is lost.
            if !done[k] {
                for (b, out) in rbuf.chunks_mut(BLOCK).enumerate() {
                    let col = (b * BLOCK) as u64;
                    if !self.rebuild_block(chunk, members, pos, need, r, col, out) {
                        out.fill(0);
                        if let Some(voff) =
                            data_volume_offset(self.chunk_size, idx, chunk, pos, r, col)
                        {
                            found.lost.push((voff, out.len() as u64));
                        }
                    }
                }
            }
        }
        let at = t.offset + row * su;
        let r = write(dst.as_ref(), &buf, at);
        if r.is_ok() {
            // The group's flush then mostly waits for writes already under way.
            dst.start_writeback(at, buf.len() as u64);
            if let Some(cs) = &self.csums {
                found
                    .csum_blocks
                    .entry(t.member)
                    .or_default()
                    .extend(cs.record(t.member, dst, at, &buf));
            }
        }
        scratch.out = buf;
        r
    }
}
