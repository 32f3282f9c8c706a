//! Redirect-on-write for chunks a commit holds whole: their rows go to fresh slices (free
//! space, same profile, same members), which are flushed before the chunk map is switched
//! to them in one metadata commit. Nothing is journaled for them and nothing is read: the
//! bytes reach the members once, plus parity.
//!
//! Why it keeps the journal's promises (docs/architecture.md, "Redirect-on-write"):
//! - Until the map switch is durable the map names the old slices, which this commit never
//!   wrote: a power cut leaves every block of those chunks as it was at the last commit.
//! - The new slices are complete (every row, parity included) and flushed before the
//!   switch, so once the switch is durable they hold the new contents with the chunk's
//!   full redundancy — also with a member missing at restart.
//! - The switch is one metadata generation (two slots, the newest valid one wins).
//! - The old slices become free space. Journal records of earlier txgs may still name
//!   them, and a restart replays the newest two txgs: so after a switch that freed slices
//!   the journal is retired (made durable in place, then cleared) before anything can be
//!   allocated there. Until then the commit lock, which every allocation takes, is held;
//!   a replay into slices that are merely free harms nothing.
//! - A reader that found the old slices is covered: the chunk's blocks are in the
//!   committing set, laid over whatever a member read returns, until the commit ends.
//!
//! - Checksums of the fresh slices are set in the cache and their checksum blocks written
//!   whole, outside the journal, before the flush that precedes the switch — as a rebuild
//!   writes a new slice's. The cache is the truth for every other entry of those blocks
//!   (journaled entries reach it as they are applied in place), and a replayed txg puts
//!   back only its own blocks' entries (entry-sized records), never these.
//!
//! Chunks are redirected only while every member the array uses is present and healthy
//! (no rebuild, no replacement, no member leaving); otherwise, and for any chunk lacking
//! free space of its shape, the journal takes them.

use super::dirty::DirtySet;
use super::Txg;
use crate::error::{Error, Result};
use crate::layout::chunkmap::{Allocator, Chunk, Template};
use crate::member::{flush_all, write_parallel, AlignedBuf, Lent};
use crate::meta::{alloc_candidates, is_no_space, member_spaces};
use crate::ondisk::metadata::MemberState;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Virtual bytes laid out and written per step: bounds the buffers a redirect holds.
const STEP: u64 = 16 << 20;

/// A chunk written to fresh slices, not yet in the map.
pub(super) struct Redirected {
    pub idx: usize,
    /// The slices it replaces (`None`: the chunk was never written).
    pub old: Option<Arc<Chunk>>,
    pub new: Arc<Chunk>,
}

impl Txg {
    /// Whether whole chunks may go to fresh slices now.
    fn may_redirect(&self) -> bool {
        if self.read_only {
            return false;
        }
        let members = self.members();
        let st = self.store.lock();
        st.meta
            .members
            .iter()
            .enumerate()
            .all(|(i, m)| match m.state {
                MemberState::Active => !m.failed && !m.leaving && members[i].is_some(),
                MemberState::Spare => m.replaces.is_none(),
                MemberState::Removed => true,
                MemberState::Faulty => false,
            })
    }

    /// Writes the chunks `whole` (indices the frozen set covers entirely, in order) to fresh
    /// slices. Chunks without room for a copy of their shape are left out (the journal takes
    /// them). A member that fails meanwhile, or a full host filesystem, gives an empty list:
    /// nothing is lost, the journal takes them all (the fresh slices were free space).
    pub(super) fn redirect_whole(
        &self,
        whole: &[usize],
        frozen: &DirtySet,
    ) -> Result<Vec<Redirected>> {
        if whole.is_empty() || !self.may_redirect() {
            return Ok(Vec::new());
        }
        let planned = self.place_fresh(whole);
        let members = self.members();
        let mut touched: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
        let mut result = Ok(());
        for r in &planned {
            result = self.write_fresh(r, frozen, &members, &mut touched);
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            if let Some(cs) = &self.csums {
                let writes = touched
                    .iter()
                    .flat_map(|(&m, cbs)| cs.block_writes(m, cbs))
                    .map(|w| (w.member, w.offset, w.data))
                    .collect();
                result = write_parallel(&members, writes).map(drop);
            }
        }
        match result {
            Ok(()) => Ok(planned),
            Err(e) if self.absorb(&e) || is_member_full(&e) => {
                tracing::warn!("{e}: whole chunks go through the journal this commit");
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Fresh slices for each chunk in `whole`: never-written chunks by the same greedy step
    /// as any first write (so the advertised size stays reachable); written ones on the
    /// members they use now, same profile, so that freeing the old slices leaves every
    /// member's free space as it was.
    fn place_fresh(&self, whole: &[usize]) -> Vec<Redirected> {
        let st = self.store.lock();
        let spaces = member_spaces(&st.meta.members, self.sb_layout.data_offset);
        let mut alloc = Allocator::new(&spaces, &st.meta.map);
        let all = alloc_candidates(&st.meta);
        let mut out = Vec::new();
        let (fresh, written): (Vec<usize>, Vec<usize>) = whole
            .iter()
            .partition(|&&idx| st.meta.map.chunks[idx].is_none());
        for idx in fresh {
            if st.meta.volume_of(idx).is_none_or(|v| v.thin) {
                // A thin volume's first chunk goes through `chunk_for_write`, which keeps
                // other volumes' reservations.
                continue;
            }
            let t = st.meta.template_for(idx);
            let on = crate::meta::candidates_for(&t, &all, &st.meta, &self.members());
            let Some(c) = alloc.allocate(&t, self.chunk_size, &on) else {
                break;
            };
            out.push(Redirected {
                idx,
                old: None,
                new: Arc::new(c),
            });
        }
        for idx in written {
            let old = st.meta.map.chunks[idx].clone().expect("written chunk");
            let mut on: Vec<u16> = old.slices.iter().map(|s| s.member).collect();
            on.sort_unstable();
            let t = Template {
                level: old.profile.level,
                copies: old.profile.copies,
                stripe_unit: old.profile.stripe_unit,
            };
            let Some(c) = alloc.allocate(&t, self.chunk_size, &on) else {
                continue;
            };
            let mut got: Vec<u16> = c.slices.iter().map(|s| s.member).collect();
            got.sort_unstable();
            if c.profile != old.profile || got != on {
                alloc.release(&c);
                continue;
            }
            out.push(Redirected {
                idx,
                old: Some(old),
                new: Arc::new(c),
            });
        }
        out.sort_by_key(|r| r.idx);
        out
    }

    /// Lays out and writes every row of `r.new` from the frozen set, in steps.
    fn write_fresh(
        &self,
        r: &Redirected,
        frozen: &DirtySet,
        members: &[Option<crate::member::Dev>],
        touched: &mut BTreeMap<u16, Vec<u64>>,
    ) -> Result<()> {
        let c = &r.new;
        let su = c.profile.stripe_unit;
        let rows = c.slice_len / su;
        let step_rows = (STEP / c.profile.row_bytes()).max(1);
        let base = r.idx as u64 * self.chunk_size;
        let mut fill = |co: u64, dst: &mut [u8]| {
            let lo = base + co;
            for (o, d) in frozen.overlapping(lo, lo + dst.len() as u64) {
                dst[(o - lo) as usize..(o - lo) as usize + d.len()].copy_from_slice(d);
            }
        };
        let mut row = 0;
        while row < rows {
            let end = (row + step_rows).min(rows);
            let need = ((end - row) * su) as usize;
            // Each member lends the buffer its slice is laid out in and takes it back with
            // the write: no copy on the way to its worker (O_DIRECT wants aligned memory).
            let mut bufs: Vec<AlignedBuf> = c
                .slices
                .iter()
                .map(|s| match &members[s.member as usize] {
                    Some(d) => d.aligned_buffer(need),
                    None => AlignedBuf::zeroed(need),
                })
                .collect();
            self.lay_out_rows(c, self.chunk_size, row..end, &mut bufs, &mut fill);
            if let Some(cs) = &self.csums {
                for (s, b) in c.slices.iter().zip(&bufs) {
                    if let Some(d) = &members[s.member as usize] {
                        let cbs = cs.record(s.member, d, s.offset + row * su, &b[..need]);
                        touched.entry(s.member).or_default().extend(cbs);
                    }
                }
            }
            let writes = c
                .slices
                .iter()
                .zip(bufs)
                .map(|(s, b)| (s.member, s.offset + row * su, Lent(b, need)))
                .collect();
            write_parallel(members, writes)?;
            // Start writing these back now, as a rebuild does: the flush before the switch
            // then finds most of them on the disk already.
            for s in &c.slices {
                if let Some(d) = &members[s.member as usize] {
                    d.start_writeback(s.offset + row * su, (end - row) * su);
                }
            }
            row = end;
        }
        Ok(())
    }

    /// Puts the redirected chunks in the map (their slices are durable: `flushed` says the
    /// commit flushed every member after writing them, else it is done here), then retires
    /// the journal if old slices were freed. `next`: the next txg number.
    pub(super) fn switch_redirected(
        &self,
        done: Vec<Redirected>,
        flushed: bool,
        next: u64,
    ) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        if !flushed {
            loop {
                match flush_all(&self.members()) {
                    Ok(()) => break,
                    Err(e) if self.absorb(&e) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        let freed = done.iter().any(|r| r.old.is_some());
        {
            let mut st = self.store.lock();
            let mut meta = st.meta.clone();
            for r in &done {
                meta.map.chunks[r.idx] = Some(r.new.clone());
            }
            self.commit_meta(&mut st, meta)?;
        }
        if freed {
            if let Err(e) = self.retire_journal_at(next) {
                // Old slices are free in the map but journal records may still name them:
                // no further write may allocate there before a restart replays and retires.
                self.poisoned
                    .store(true, std::sync::atomic::Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }
}

fn is_member_full(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if is_no_space(source))
}
