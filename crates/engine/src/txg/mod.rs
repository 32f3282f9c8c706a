//! Transaction groups: writes gather as dirty blocks in memory (`dirty.rs`, and the write
//! log on tmpfs, `wlog.rs`, so a killed process loses none) and reach the members in
//! commits (on flush, when the dirty budget is reached, or from the background committer).
//! A commit writes the chunks it holds whole to fresh slices and switches the map to them
//! (`redirect.rs`); for the rest it plans every touched stripe row (data and fresh parity,
//! `plan.rs`), journals each member's share, flushes, and only then writes in place — so a
//! crash at any instant leaves every row either as it was or replayable from the journal.
//! The last txg's in-place writes may wait until after the FLUSH is answered (the journal
//! holds them durably): the applier thread, or whoever takes the commit lock next
//! ([`Txg::commit_lock`]), writes them first. Journaling a txg, writing it in place and
//! the commit lock that orders the two are in `apply.rs`.

mod apply;
mod dirty;
mod errseq;
mod plan;
mod read;
mod recycle;
mod redirect;
mod release;
mod unwritable;
pub mod wlog;

pub use errseq::FlushToken;

use crate::data::{Data, Seg};
use crate::error::{Error, Result};
use crate::layout::chunkmap::Chunk;
use crate::layout::stripe::for_rows;
use crate::member::{flush_all, read, write, Dev};
use crate::meta::JournalArea;
use crate::ondisk::journal;
use crate::units::{MemberWrite, BLOCK};
use apply::Journaled;
use dirty::DirtySet;
use parking_lot::{Condvar, Mutex, RwLock};
use plan::{join_adjacent, whole_chunks, with_joined, TxgPlan};
use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) struct Cache {
    /// Blocks written since the last commit began.
    pub open: Mutex<DirtySet>,
    /// Blocks of the commit in progress; readable until they are in place.
    pub committing: RwLock<DirtySet>,
    /// Held for a whole commit; the number of the next txg.
    pub next_txg: Mutex<u64>,
    pub budget: u64,
    /// Bytes of the commit in progress (with `open`, what the budget bounds).
    committing_bytes: AtomicU64,
    /// Rung when the open set passes a quarter of the budget; the background committer
    /// (`Array::spawn_flusher`) waits on it and commits then, while writes go on.
    pub kick: Arc<Kick>,
    /// Rung when a commit leaves its in-place writes pending (see [`Txg::commit_lock`]);
    /// the applier thread (`Array::spawn_flusher`) then writes them.
    pub apply_kick: Arc<Kick>,
    /// Times a commit took the open set away; changed only under the `open` lock. A
    /// partial-block write that read a block's other bytes checks it did not change (see
    /// `Txg::buffer_write`).
    pub swaps: AtomicU64,
    /// Buffers of ended commits, for the next writes (`recycle.rs`).
    bin: recycle::Bin,
    /// Writes buffered so far, and that count at the last [`Txg::idle`].
    writes: AtomicU64,
    writes_seen: AtomicU64,
    /// When [`Txg::idle`] first saw no write and nothing dirty, since the last write.
    quiet_since: Mutex<Option<std::time::Instant>>,
}

/// How long an array goes without writes before the memory kept for them goes back.
/// Longer than the background committer's period, so a client's pause between two large
/// writes (a VM's bursts, a benchmark's rounds) does not start the next one on fresh
/// memory, which the kernel zero-fills and faults in page by page.
pub const KEEP_WHILE_QUIET: std::time::Duration = std::time::Duration::from_secs(30);

/// A doorbell for the background committer (shared without keeping the array alive).
#[derive(Default)]
pub struct Kick {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Kick {
    /// Waits until rung or `timeout` passes; true if rung.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let mut k = self.rung.lock();
        if !*k {
            self.cv.wait_for(&mut k, timeout);
        }
        std::mem::take(&mut *k)
    }

    fn ring(&self) {
        let mut k = self.rung.lock();
        if !*k {
            *k = true;
            self.cv.notify_one();
        }
    }
}

impl Cache {
    pub fn new(next_txg: u64, budget: u64) -> Cache {
        Cache {
            open: Mutex::new(DirtySet::default()),
            committing: RwLock::new(DirtySet::default()),
            next_txg: Mutex::new(next_txg),
            budget,
            committing_bytes: AtomicU64::new(0),
            kick: Arc::default(),
            apply_kick: Arc::default(),
            swaps: AtomicU64::new(0),
            bin: recycle::Bin::new(budget),
            writes: AtomicU64::new(0),
            writes_seen: AtomicU64::new(0),
            quiet_since: Mutex::new(None),
        }
    }
}

/// Copies block `b` (volume offset, block-aligned) from `set` into `dst`, if it is held.
fn copy_block(set: &DirtySet, b: u64, dst: &mut [u8]) -> bool {
    if !set.contains(b) {
        return false;
    }
    for (o, d) in set.overlapping(b, b + BLOCK) {
        dst[(o - b) as usize..(o - b) as usize + d.len()].copy_from_slice(d);
    }
    true
}

/// Default dirty budget: a tenth of memory, between 16 MiB and 1 GiB (ZFS's rule of thumb).
pub fn default_budget() -> u64 {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(1 << 30, |kib| kib * 1024);
    (mem / 10).clamp(16 << 20, 1 << 30)
}

/// The commit layer of an open array, over its data layer.
pub struct Txg {
    data: Data,
    pub(crate) journal: Option<JournalArea>,
    pub(crate) cache: Cache,
    /// A commit failed after its journal was durable: memory no longer matches the members.
    pub(crate) poisoned: AtomicBool,
    /// Writes acknowledged but not committed, outside the process (see `wlog.rs`).
    pub(crate) wlog: std::sync::OnceLock<wlog::WriteLog>,
    /// The last commit's txg: durable in the journal, not yet written in place. Its blocks
    /// stay in the committing set (readers see them) until it is; whoever takes the commit
    /// lock next writes it first ([`Txg::commit_lock`]).
    pending: Mutex<Option<Journaled>>,
    /// Whether a commit may leave its last txg's in-place writes pending: set when an
    /// applier thread runs ([`Txg::defer_in_place`]); otherwise a commit applies at once.
    defer: AtomicBool,
    /// Each volume's write-back error sequence, bumped when a commit drops its data
    /// (`errseq.rs`).
    pub(crate) errseq: errseq::ErrSeqs,
}

impl Deref for Txg {
    type Target = Data;
    fn deref(&self) -> &Data {
        &self.data
    }
}

impl Txg {
    pub(crate) fn new(data: Data, journal: Option<JournalArea>, budget: u64) -> Txg {
        Txg {
            data,
            journal,
            cache: Cache::new(1, budget),
            poisoned: AtomicBool::new(false),
            wlog: std::sync::OnceLock::new(),
            pending: Mutex::new(None),
            defer: AtomicBool::new(false),
            errseq: Default::default(),
        }
    }

    /// The chunk at `idx`, allocating (and zeroing) it first if it was never written.
    pub(crate) fn chunk_for_write(&self, idx: usize) -> Result<Arc<Chunk>> {
        if let Some(c) = self.store.chunk(idx) {
            // A chunk that cannot be read (a `single` chunk whose member is gone) cannot
            // take a write either: EIO now, not a commit that fails later.
            if !crate::meta::chunk_intact(&c, &self.members()) {
                return Err(Error::Unavailable(format!(
                    "chunk {idx}: its only member is gone; volume bytes {}..{} cannot be written",
                    idx as u64 * self.chunk_size,
                    (idx as u64 + 1) * self.chunk_size
                )));
            }
            return Ok(c);
        }
        // Zeroing checksums writes checksum blocks outside the journal: no commit may be
        // writing them meanwhile (lock order: commit lock, then metadata state). A rebuild
        // holds the commit lock while it places slices the map does not show yet.
        let _commit = (self.csums.is_some() || self.journal.is_some()).then(|| self.commit_lock());
        self.chunk_for_write_locked(idx)
    }

    /// Buffers a write as dirty blocks; commits first if the budget is exceeded. A write of
    /// whole blocks keeps `buf` as it is; returns buffers it displaced (for reuse).
    /// `buf` is taken once it is in the dirty set (a retry after a failed commit finds
    /// `None` and only commits).
    pub(crate) fn write_cached(
        &self,
        payload: &mut Option<Payload>,
        offset: u64,
    ) -> Result<Vec<Vec<u8>>> {
        let mut spare = Vec::new();
        if payload.is_some() {
            let owned = matches!(payload, Some(Payload::Owned(_)));
            self.cache.writes.fetch_add(1, Ordering::Relaxed);
            self.buffer_write(payload, offset, &mut spare)?;
            if owned && spare.is_empty() {
                // The caller reuses what it gets back: let it have an earlier commit's buffer.
                self.cache.bin.take(1, &mut spare);
            }
        }
        // The budget bounds what the open and the committing sets hold together: past it a
        // writer commits itself (after the commit in progress). Past a quarter of it in the
        // open set, the background committer is asked to start one, so writes keep
        // flowing into a fresh open set and a FLUSH finds little left to do.
        let open = self.cache.open.lock().bytes();
        let committing = self.cache.committing_bytes.load(Ordering::Acquire);
        // Kept buffers count against the budget too (`recycle.rs`).
        let room = self.cache.budget.saturating_sub(open + committing);
        self.cache
            .bin
            .trim_to(usize::try_from(room).unwrap_or(usize::MAX));
        if open + committing > self.cache.budget {
            self.commit()?;
        } else if open > self.cache.budget / 4 {
            self.cache.kick.ring();
        }
        Ok(spare)
    }

    /// Puts the write into the open set; takes `payload` once nothing can fail any more.
    fn buffer_write(
        &self,
        payload: &mut Option<Payload>,
        offset: u64,
        spare: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        let len = payload.as_ref().expect("payload").len() as u64;
        let end = offset + len;
        let lo = offset / BLOCK * BLOCK;
        let hi = end.next_multiple_of(BLOCK);
        if lo == offset && hi == end {
            let mut data = payload.take().expect("payload").into_vec();
            if data.capacity() > 2 * data.len() {
                // A recycled buffer much larger than the write: keep only the bytes.
                let tight = data.clone();
                spare.push(std::mem::replace(&mut data, tight));
            }
            let mut log = self.wlog.get().map(|l| l.lock());
            if let Some(l) = &mut log {
                l.append(lo, &data);
            }
            self.cache
                .open
                .lock()
                .insert(lo, data, &mut |d| spare.push(d));
        } else {
            // Partly written blocks keep their other bytes: from the open set, else read
            // (outside the lock) and then taken from the open set after all if a writer
            // dirtied them meanwhile.
            let mut edges = vec![lo];
            if hi - BLOCK != lo {
                edges.push(hi - BLOCK);
            }
            edges.retain(|&b| b < offset || b + BLOCK > end);
            let mut whole = vec![0u8; (hi - lo) as usize];
            let at = |b: u64| (b - lo) as usize..(b - lo + BLOCK) as usize;
            // What was read is only current if no commit took the open set away between
            // the look into it and the insert. Otherwise a write of the same block that
            // came meanwhile (another 1 KiB of it, say, in flight beside this one: ext4
            // with 1 KiB blocks writes neighbouring block bitmaps so) is in neither: it
            // went to the committing set after our read, or is in place already. Inserting
            // the block as read would undo that acknowledged write. So read again. (A
            // commit that takes blocks out of the open set must bump `swaps`.)
            // The write log is locked before the open set (its lock order), and held with
            // it until the insert, so the record and the block join the same set.
            let (mut log, mut open) = loop {
                let log = self.wlog.get().map(|l| l.lock());
                let open = self.cache.open.lock();
                let swaps = self.cache.swaps.load(Ordering::Relaxed);
                let need: Vec<u64> = edges
                    .iter()
                    .copied()
                    .filter(|&b| !copy_block(&open, b, &mut whole[at(b)]))
                    .collect();
                if need.is_empty() {
                    break (log, open);
                }
                drop(open);
                drop(log);
                for &b in &need {
                    self.read_at(&mut whole[at(b)], b)?;
                }
                let log = self.wlog.get().map(|l| l.lock());
                let open = self.cache.open.lock();
                if self.cache.swaps.load(Ordering::Relaxed) == swaps {
                    break (log, open);
                }
            };
            if let Some(l) = &mut log {
                l.append(offset, payload.as_ref().expect("payload").as_slice());
            }
            // Blocks dirtied since the look (with no commit between) are newer than the
            // read: taken from the open set after all.
            for &b in &edges {
                copy_block(&open, b, &mut whole[at(b)]);
            }
            let buf = payload.take().expect("payload");
            whole[(offset - lo) as usize..(end - lo) as usize].copy_from_slice(buf.as_slice());
            open.insert(lo, whole, &mut |d| spare.push(d));
        }
        Ok(())
    }

    /// Reads with dirty blocks laid over what the members hold.
    pub(crate) fn read_cached(
        &self,
        buf: &mut [u8],
        offset: u64,
        view: &[Option<Dev>],
    ) -> Result<()> {
        let end = offset + buf.len() as u64;
        // Lock order is always `open` before `committing` (as in `commit`): copy what the
        // open set has for this range first.
        let newer: Vec<(u64, Vec<u8>)> = {
            let open = self.cache.open.lock();
            if open.is_empty() {
                Vec::new()
            } else {
                open.overlapping(offset, end)
                    .map(|(o, d)| (o, d.to_vec()))
                    .collect()
            }
        };
        // Held across the member read so a block cannot leave the committing set (being put
        // in place) between our member read and the overlay.
        let committing = self.cache.committing.read();
        let in_newer = |b: u64| {
            let (bs, be) = (b * BLOCK, (b + 1) * BLOCK);
            // Pieces are in order: the first one ending after the block's start.
            let k = newer.partition_point(|(o, d)| o + d.len() as u64 <= bs);
            newer.get(k).is_some_and(|(o, _)| *o < be)
        };
        let dirty = |b: u64| in_newer(b) || committing.contains(b * BLOCK);
        self.read_members(buf, offset, &dirty, view)?;
        let mut lay = |o: u64, d: &[u8]| {
            buf[(o - offset) as usize..(o - offset) as usize + d.len()].copy_from_slice(d);
        };
        for (o, d) in committing.overlapping(offset, end) {
            lay(o, d);
        }
        drop(committing);
        for (o, d) in &newer {
            lay(*o, d);
        }
        Ok(())
    }

    /// Gives back memory kept for writes (the recycled buffers, the write log's retained
    /// tmpfs memory) once nothing was written for [`KEEP_WHILE_QUIET`]: the background
    /// committer calls it every period.
    pub fn idle(&self) {
        self.idle_after(KEEP_WHILE_QUIET);
    }

    fn idle_after(&self, quiet: std::time::Duration) {
        let n = self.cache.writes.load(Ordering::Relaxed);
        let wrote = self.cache.writes_seen.swap(n, Ordering::Relaxed) != n;
        let mut since = self.cache.quiet_since.lock();
        if wrote || self.dirty_bytes() != 0 {
            *since = None;
            return;
        }
        if since.get_or_insert_with(std::time::Instant::now).elapsed() >= quiet {
            self.cache.bin.clear();
            if let Some(l) = self.wlog.get() {
                l.shrink();
            }
        }
    }

    /// Makes every write so far durable: journal and flush. The last txg's in-place writes
    /// may be left pending (see [`Txg::commit_lock`]): the journal holds them durably.
    pub(crate) fn commit(&self) -> Result<()> {
        let mut next = self.commit_lock();
        let rotated;
        {
            let mut log = self.wlog.get().map(|l| l.lock());
            let mut open = self.cache.open.lock();
            if open.is_empty() {
                return Ok(());
            }
            rotated = log.as_mut().map(|l| l.rotate());
            let mut c = self.cache.committing.write();
            std::mem::swap(&mut *open, &mut *c);
            self.cache
                .committing_bytes
                .store(c.bytes(), Ordering::Release);
            self.cache.swaps.fetch_add(1, Ordering::Relaxed);
        }
        let result = self.commit_frozen(&mut next);
        if let (Ok(()), Some(k), Some(l)) = (&result, rotated, self.wlog.get()) {
            // Durable now: the log's records of this set are not needed any more.
            l.covered(k);
        }
        if result.is_ok() && self.pending.lock().is_some() {
            // The committing set stays until the applier (or the next holder of the commit
            // lock) has written it in place.
            self.cache.apply_kick.ring();
        } else {
            self.end_commit(result.is_err());
        }
        result
    }

    fn commit_frozen(&self, next: &mut u64) -> Result<()> {
        if let Some(c) = &self.csums {
            c.trim();
        }
        let frozen = self.cache.committing.read();
        let members = self.members();
        let area = self.journal.clone().expect("commit needs a journal");
        // The extents cut at chunk boundaries: (chunk, offset in chunk, bytes), in order.
        let c = self.chunk_size;
        let mut pieces: Vec<(usize, u64, &[u8])> = Vec::new();
        for (s, d) in frozen.extents() {
            let mut at = 0;
            while at < d.len() {
                let off = s + at as u64;
                let n = ((c - off % c) as usize).min(d.len() - at);
                pieces.push(((off / c) as usize, off % c, &d[at..at + n]));
                at += n;
            }
        }
        let unwritten = self.drop_unwritable(&mut pieces, &members);
        let mut written: Vec<usize> = pieces.iter().map(|p| p.0).collect();
        written.dedup();
        // Chunks held whole go to fresh slices (redirect.rs); the others take the journal.
        // Those never written are placed first, so the fresh slices are chosen from a map
        // that already has them.
        let (whole, partial) = whole_chunks(&pieces, c);
        for &idx in &partial {
            self.chunk_for_write_locked(idx)?;
        }
        let redirected = self.redirect_whole(&whole, &frozen)?;
        let first_txg = *next;
        let mut txg = TxgPlan::default();
        let mut i = 0;
        while i < pieces.len() {
            let idx = pieces[i].0;
            let mut j = i;
            while j < pieces.len() && pieces[j].0 == idx {
                j += 1;
            }
            if redirected.iter().any(|r| r.idx == idx) {
                i = j;
                continue;
            }
            let chunk = self.chunk_for_write_locked(idx)?;
            // The stripe rows the pieces touch, each row planned once with all of its
            // segments.
            let mut rows: BTreeMap<u64, Vec<Seg>> = BTreeMap::new();
            for &(_, co, data) in &pieces[i..j] {
                for_rows(&chunk.profile, co, data.len(), |row, segs| {
                    rows.entry(row)
                        .or_default()
                        .extend(segs.into_iter().map(|(i, col, r)| Seg {
                            i,
                            col,
                            data: &data[r],
                        }));
                    Ok(())
                })?;
            }
            for (row, segs) in rows {
                let joined = join_adjacent(&segs);
                let segs = with_joined(&segs, &joined);
                let mut writes = Vec::new();
                self.with_failover(|| {
                    writes.clear();
                    self.plan_row(idx, &self.members(), &chunk, row, &segs, &mut writes)
                })?;
                if !txg.fits(&writes, area.half, members.len(), area.device.is_some()) {
                    self.journal_and_apply(&mut txg, next)?;
                }
                txg.add(idx as u32, row, writes, area.device.is_some());
            }
            i = j;
        }
        // The last txg's in-place writes wait for the applier: the client's FLUSH is answered
        // once the journal is durable. Not when the map changes in this commit (a switch
        // may retire the journal, which needs everything in place first) or ranges are
        // recorded lost.
        if let Some(j) = self.journal_txg(&mut txg, next)? {
            if self.defer.load(Ordering::Relaxed) && redirected.is_empty() && unwritten.is_empty() {
                *self.pending.lock() = Some(j);
            } else {
                self.apply_rows(j.rows, j.csums)?;
            }
        }
        // A journal flush after the redirected writes made them durable too.
        self.switch_redirected(redirected, *next > first_txg, *next)?;
        self.check_written(&written);
        self.record_unwritten(unwritten)
    }

    /// Replays the journal on assemble (see [`journal::select_replay`]); returns the next txg.
    pub(crate) fn replay_journal(&self) -> Result<(u64, Vec<MemberWrite>)> {
        let Some(area) = self.journal.clone() else {
            return Ok((1, Vec::new()));
        };
        let members = self.members();
        let sizes: Vec<u64> = self
            .store
            .lock()
            .meta
            .members
            .iter()
            .map(|m| m.size)
            .collect();
        let data_offset = self.sb_layout.data_offset;
        // Checksum blocks after each data area are journaled too.
        let data_area = |m: u16| {
            sizes.get(m as usize).map(|&end| match &self.csums {
                Some(_) => (
                    data_offset,
                    end + crate::ondisk::csum::area_len(end - data_offset),
                ),
                None => (data_offset, end),
            })
        };
        let sources = journal_holders(&area, &members);
        let mut found = Vec::new();
        let mut newest = 0;
        for (d, m) in &sources {
            for h in 0..2 {
                let off = area.offset + h * area.half;
                let mut hdr = vec![0u8; 4096];
                read(d.as_ref(), &mut hdr, off)?;
                let Some((txg, len)) = journal::decode_header(&hdr, &self.uuid, *m, area.half)
                else {
                    continue;
                };
                newest = newest.max(txg);
                let mut all = vec![0u8; (journal::HEADER_LEN as u64 + len) as usize];
                read(d.as_ref(), &mut all, off)?;
                if let Some(r) = journal::decode(&all, &self.uuid, *m, area.half, &data_area) {
                    found.push(r);
                }
            }
        }
        let present: Vec<u16> = if area.device.is_some() {
            vec![journal::EXTERNAL]
        } else {
            (0..members.len() as u16)
                .filter(|&m| members[m as usize].is_some())
                .collect()
        };
        let replay = journal::select_replay(&found, &present, newest);
        let mut writes = Vec::new();
        for txg in &replay {
            for r in found.iter().filter(|r| r.txg == *txg) {
                writes.extend(r.writes.iter().cloned());
            }
        }
        Ok((newest + 1, writes))
    }

    /// Once everything journaled is durable in place, forgets the journal so the next
    /// assemble has nothing to replay. The half holding the older txg is cleared (and
    /// flushed) before the newest one's, and in the newest one's half the records of older
    /// txgs (on members that sat the newest out) before the newest's, so a crash midway
    /// leaves either the newest txg complete — replaying it alone is harmless, its writes
    /// are durable — or it incomplete and every older record gone, which replays nothing
    /// (see `journal::select_replay`).
    pub(crate) fn retire_journal(&self) -> Result<()> {
        let next = *self.commit_lock();
        self.retire_journal_at(next)
    }

    /// [`Txg::retire_journal`] for a caller that holds the commit lock (`next`: the next
    /// txg number).
    pub(crate) fn retire_journal_at(&self, next: u64) -> Result<()> {
        let Some(area) = self.journal.clone() else {
            return Ok(());
        };
        let members = self.members();
        flush_all(&members)?;
        let holders = journal_holders(&area, &members);
        let newest = next.saturating_sub(1);
        let zeros = vec![0u8; 4096];
        let clear = |group: &[&(Dev, u16)], half: u64| -> Result<()> {
            for (d, _) in group {
                write(d.as_ref(), &zeros, area.offset + half * area.half)?;
            }
            let devs: Vec<Option<Dev>> = group.iter().map(|(d, _)| Some(d.clone())).collect();
            flush_all(&devs)
        };
        clear(&holders.iter().collect::<Vec<_>>(), (newest + 1) % 2)?;
        // In the newest txg's half, a member that sat that txg out may still hold an older
        // record of the same parity. It goes first: were the newest txg's records cleared
        // and such a record left by a crash, it would pass for the newest txg and be
        // replayed over newer data.
        let half = newest % 2;
        let mut hdr = vec![0u8; 4096];
        let mut older = Vec::new();
        let mut newest_holders = Vec::new();
        for h in &holders {
            read(h.0.as_ref(), &mut hdr, area.offset + half * area.half)?;
            match journal::decode_header(&hdr, &self.uuid, h.1, area.half) {
                Some((txg, _)) if txg == newest => newest_holders.push(h),
                _ => older.push(h),
            }
        }
        clear(&older, half)?;
        clear(&newest_holders, half)?;
        Ok(())
    }

    /// Bytes written but not yet committed.
    pub fn dirty_bytes(&self) -> u64 {
        self.cache.open.lock().bytes()
    }
}

/// A write's bytes: borrowed (copied into the dirty set) or owned (kept as they are).
pub(crate) enum Payload<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Payload<'_> {
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Owned(v) => v,
        }
    }
    /// The bytes as a buffer of their own: an owned one as it is (no copy).
    fn into_vec(self) -> Vec<u8> {
        match self {
            Payload::Borrowed(b) => b.to_vec(),
            Payload::Owned(v) => v,
        }
    }
}

/// The devices holding journal records, each with whose records they are: the journal
/// device (all members' records), or every present member (its own).
fn journal_holders(area: &JournalArea, members: &[Option<Dev>]) -> Vec<(Dev, u16)> {
    match &area.device {
        Some(dev) => vec![(dev.clone(), journal::EXTERNAL)],
        None => members
            .iter()
            .enumerate()
            .filter_map(|(m, d)| d.clone().map(|d| (d, m as u16)))
            .collect(),
    }
}
