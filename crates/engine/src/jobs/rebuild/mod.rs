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
use crate::layout::chunkmap::{Allocator, Chunk, MemberSpace};
use crate::layout::profile::Level;
use crate::ondisk::metadata::MemberState;
use crate::units::merge_ranges;
use std::sync::Arc;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub chunks_rebuilt: usize,
    pub bytes: u64,
    /// Chunks that still need a place to go (no spare, no free space).
    pub chunks_stuck: usize,
    /// Volume ranges lost: `single` chunks on a failed member, and blocks another member
    /// failed to read during the rebuild.
    pub lost: Vec<(u64, u64)>,
}

/// Threads that rebuild rows at once (at most; the machine's cores if fewer). Two per core
/// were tried: the rebuild ran faster under load (317 against 281 MB/s) but took the cores
/// from the NBD server (client IOPS during the rebuild 0.35× healthy against 0.43×).
const MAX_REBUILD_THREADS: usize = 4;

mod chunk;
mod pipeline;

use pipeline::{ClosePipe, Pipe};

/// Chunks moved but not yet committed (see `Jobs::rebuild`).
#[derive(Default)]
pub(super) struct Group {
    /// The map the allocator sees: the committed one plus every new slice of the group.
    pub(super) alloc_map: crate::layout::chunkmap::ChunkMap,
    /// Free space left by `alloc_map` on the members as they were (kept from chunk to
    /// chunk: deriving it from the map is linear in the map's size).
    pub(super) alloc: Option<(Vec<MemberSpace>, Allocator)>,
    pub(super) moved: Vec<(usize, Arc<Chunk>)>,
    pub(super) lost: Vec<(u64, u64)>,
    pub(super) flush: Vec<u16>,
}

pub(super) enum Step {
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
            if jobs.slot(JobKind::Rebuild).running {
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
        self.running(JobKind::Rebuild)
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
        let mut work: Vec<(usize, usize)> = st
            .meta
            .map
            .allocated()
            .filter(|(_, c)| {
                crate::meta::chunk_intact(c, &members)
                    && self
                        .needs(c, &failed, &replacing)
                        .iter()
                        .any(|n| *n != Need::Copy { to: u16::MAX })
            })
            .map(|(i, c)| (i, crate::meta::spare_failures(c, &members).unwrap_or(0)))
            .collect();
        // The chunks (so the volumes) with the least redundancy left go first.
        work.sort_by_key(|&(i, left)| (left, i));
        work.into_iter().map(|(i, _)| i).collect()
    }

    /// Chunks with a slice on a member that is gone.
    pub fn chunks_degraded(&self) -> usize {
        let members = self.members();
        let st = self.store.committed();
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
        !self.read_only && (!self.rebuild_work().is_empty() || !self.unrebuildable().is_empty())
    }

    /// `single` chunks with their slice on a failed member: nothing holds their data any
    /// more, so a rebuild cannot bring them back (see [`Jobs::drop_unrebuildable`]).
    fn unrebuildable(&self) -> Vec<usize> {
        let failed = self.failed_members();
        let st = self.store.lock();
        st.meta
            .map
            .allocated()
            .filter(|(_, c)| {
                c.profile.level == Level::Single
                    && c.slices.iter().all(|s| failed[s.member as usize])
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Gives up the `single` chunks a rebuild cannot bring back: their virtual ranges are
    /// recorded lost (reads get EIO until they are written again), and the chunks leave the
    /// map, so the failed member holds nothing any more and can leave the array. Returns the
    /// ranges.
    fn drop_unrebuildable(&self) -> Result<Vec<(u64, u64)>> {
        let _commits = self.journal.as_ref().map(|_| self.commit_lock());
        let _direct = self.chunk_gate.write();
        let gone = self.unrebuildable();
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let cs = self.chunk_size;
        let lost: Vec<(u64, u64)> = gone.iter().map(|&i| (i as u64 * cs, cs)).collect();
        let mut st = self.store.lock();
        let mut meta = st.meta.clone();
        for &i in &gone {
            meta.map.chunks[i] = None;
        }
        meta.health.lost.extend(lost.iter().copied());
        meta.health.lost = merge_ranges(std::mem::take(&mut meta.health.lost));
        self.commit_meta(&mut st, meta.clone())?;
        drop(st);
        // Writes buffered for them will never be read back: clients are told at their
        // next flush (`txg/unwritable.rs`).
        let dirty = self.drop_dirty_of(&gone, &meta);
        if dirty > 0 {
            tracing::warn!(
                "{dirty} bytes written to given-up single chunks were not yet committed: lost \
                 with them (the next flush of each client connected gets EIO once)"
            );
        }
        let lost = merge_ranges(lost);
        for &(o, l) in &lost {
            self.emit(
                EventKind::Unrecoverable,
                None,
                Some(o),
                format!(
                    "{l} bytes at volume offset {o} were single chunks on a failed member:                      they cannot be rebuilt and are lost"
                ),
            );
        }
        Ok(lost)
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
        let _claim = self.claim(JobKind::Rebuild, &ctl)?;
        self.assign_spares()?;
        let mut report = RebuildReport {
            lost: self.drop_unrebuildable()?,
            ..Default::default()
        };
        let work = self.rebuild_work();
        if work.is_empty() {
            self.finish_rebuild()?;
            return Ok(report);
        }
        let total_chunks = self.store.lock().meta.map.allocated().count();
        let slice_bytes = |i: usize| self.slice_bytes(i);
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
        self.move_groups(work, &ctl, &mut report)?;
        if !ctl.is_cancelled() {
            // Estimates made before the work was seen end at what it really was: 100%.
            ctl.set_total(ctl.progress().done);
            self.finish_rebuild()?;
        }
        let msg = summary(&ctl, &report);
        self.emit(EventKind::RebuildFinished, None, None, msg);
        Ok(report)
    }

    /// Bytes of slices chunk `i` needs written: what progress counts. Fresh each time: a
    /// member may fail while the rebuild runs.
    fn slice_bytes(&self, i: usize) -> u64 {
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
    }

    /// Moves the chunks of `work`, and those that need it by the time a pass ends, in
    /// groups: one flush and one map commit per group.
    fn move_groups(
        &self,
        work: Vec<usize>,
        ctl: &Arc<JobControl>,
        report: &mut RebuildReport,
    ) -> Result<()> {
        let slice_bytes = |i: usize| self.slice_bytes(i);
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
                self.move_group(&work, &mut i, &pipe, &mut scratch, ahead, ctl, report)?;
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
        })
    }

    /// Places and rebuilds chunks from `work[*i..]` into one group, up to half a second or
    /// 256 MiB of slices, then commits the group.
    #[allow(clippy::too_many_arguments)]
    fn move_group(
        &self,
        work: &[usize],
        i: &mut usize,
        pipe: &Pipe,
        scratch: &mut Scratch,
        ahead: usize,
        ctl: &Arc<JobControl>,
        report: &mut RebuildReport,
    ) -> Result<()> {
        let commits = self.journal.as_ref().map(|_| self.commit_lock());
        let next_txg = commits.as_ref().map(|g| **g);
        let _direct = self.chunk_gate.write();
        let mut group = Group {
            alloc_map: self.store.lock().meta.map.clone(),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let mut bytes = 0;
        while *i < work.len()
            && !ctl.is_cancelled()
            && started.elapsed() < std::time::Duration::from_millis(500)
            && bytes < 256 << 20
        {
            let idx = work[*i];
            *i += 1;
            let n = self.slice_bytes(idx);
            match self.rebuild_chunk(idx, pipe, &mut group)? {
                Step::Moved => {
                    report.chunks_rebuilt += 1;
                    report.bytes += n;
                    bytes += n;
                }
                Step::Stuck => report.chunks_stuck += 1,
                Step::Relocate(chunk) => {
                    // Relocation commits on its own; the group so far goes first.
                    self.finish_jobs(pipe, scratch, ctl, &mut group)?;
                    self.commit_group(std::mem::take(&mut group), report)?;
                    let members = self.members();
                    match self.relocate_chunk(idx, &chunk, &members, ctl, next_txg)? {
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
            self.drain_jobs(pipe, ahead, scratch, ctl)?;
        }
        self.finish_jobs(pipe, scratch, ctl, &mut group)?;
        self.commit_group(group, report)?;
        // Relocations count without sleeping: the rate limit waits here, unlocked.
        drop(_direct);
        drop(commits);
        ctl.throttle();
        Ok(())
    }
}

/// How a rebuild ended, in words.
fn summary(ctl: &JobControl, report: &RebuildReport) -> String {
    format!(
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
    )
}
