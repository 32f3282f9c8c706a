//! One chunk's rebuild: hot spares assigned, a new place chosen for each slice that needs
//! one, its rows handed to the pipeline, the group of moved chunks committed, a chunk with
//! nowhere to go re-laid over the members left, and the replacements finished.

use super::pipeline::{Job, Pipe};
use super::{Group, RebuildReport, Step};
use crate::data::Need;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::jobs::{JobControl, Jobs};
use crate::layout::chunkmap::{Allocator, Chunk, Slice};
use crate::member::{Dev, Usable};
use crate::ondisk::metadata::MemberState;
use crate::units::merge_ranges;
use std::sync::Arc;

impl Jobs {
    /// Gives each failed member that still holds slices a hot spare of its own (the
    /// smallest one at least as large, else the largest), recorded as its replacement: one
    /// failure takes one spare.
    pub(super) fn assign_spares(&self) -> Result<()> {
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
    pub(super) fn finish_rebuild(&self) -> Result<()> {
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
        if !self.room_for_unwritten(&alloc, &crate::meta::alloc_candidates(&after)) {
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
    pub(super) fn rebuild_chunk(&self, idx: usize, pipe: &Pipe, group: &mut Group) -> Result<Step> {
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
        let (spaces, future) = {
            let st = self.store.lock();
            (
                crate::meta::member_spaces(&st.meta.members, self.sb_layout.data_offset),
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
        let actives = self.rebuild_targets(&members, &leaving);
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
        if distributed && !self.room_for_unwritten(&alloc, &future) {
            return Ok(Step::Stuck);
        }
        queue_rows(pipe, idx, &chunk, &members, &needs, &targets);
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

    /// Active members (present, staying, not being replaced) a distributed rebuild may
    /// place slices on.
    fn rebuild_targets(&self, members: &Usable, leaving: &[u16]) -> Vec<u16> {
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
    }

    /// Makes a group of moved chunks count: flush their new slices, then one map commit.
    pub(super) fn commit_group(&self, group: Group, report: &mut RebuildReport) -> Result<()> {
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
    pub(super) fn relocate_chunk(
        &self,
        idx: usize,
        old: &Chunk,
        members: &[Option<Dev>],
        ctl: &JobControl,
        next_txg: Option<u64>,
    ) -> Result<Option<Vec<(u64, u64)>>> {
        let leaving: Vec<u16> = self.replacements().iter().map(|(old, _)| *old).collect();
        let (spaces, map, template, candidates, future) = {
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
                crate::meta::alloc_candidates(&st.meta),
            )
        };
        // The old slices stay allocated in `map` until the commit: the new chunk never
        // overlaps them.
        let mut alloc = Allocator::new(&spaces, &map);
        let Some(new) = alloc.allocate(&template, self.chunk_size, &candidates) else {
            return Ok(None);
        };
        if !self.room_for_unwritten(&alloc, &future) {
            return Ok(None);
        }
        let lost = self.move_chunk(idx, old, new, members, ctl, next_txg)?;
        Ok(Some(lost))
    }
}

/// Queues the rows of each new slice of chunk `idx` for the pipeline, in batches of about
/// 1 MiB per member: one read per source per batch.
fn queue_rows(
    pipe: &Pipe,
    idx: usize,
    chunk: &Arc<Chunk>,
    members: &Usable,
    needs: &[Need],
    targets: &[Option<Slice>],
) {
    // Rows in batches of at most 1 MiB per member, as even as they come (a 1.4 MiB slice
    // is two batches of 0.7, not 1 and 0.4): one read per source per batch.
    let su = chunk.profile.stripe_unit;
    let rows = chunk.slice_len / su;
    let most = ((1u64 << 20) / su).max(1);
    let batch = rows.div_ceil(rows.div_ceil(most).max(1)).max(1);
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
}
