//! The durable half of a commit and the lock that orders it. A txg planned in `plan.rs` is
//! journaled (every member's share written, then every member flushed: from then on it is
//! durable, [`Journaled`]) and then written in place row by row, each member's writes as
//! one list. The last commit's txg may be left pending, so its FLUSH is answered once the
//! journal is durable ([`Txg::defer_in_place`]); whoever takes the commit lock next
//! ([`Txg::commit_lock`]) — the applier thread, or any commit, rebuild or reshape group,
//! allocation or journal retire — writes it in place first and then lets its blocks leave
//! the committing set, so every holder of the lock sees the members as all txgs so far
//! left them.

use super::plan::TxgPlan;
use super::Txg;
use crate::error::{Error, Result};
use crate::member::{flush_all, write_many_parallel, Dev, OwnedWrites};
use crate::meta::is_no_space;
use crate::ondisk::journal::{self, SubRecord};
use crate::units::MemberWrite;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// A txg durable in the journal: its rows `(chunk, row, writes)` and checksum entries, to
/// be written in place.
pub(super) struct Journaled {
    pub(super) rows: Vec<(u32, u64, Vec<MemberWrite>)>,
    pub(super) csums: Vec<MemberWrite>,
}

impl Txg {
    /// Lets commits leave their last txg's in-place writes pending (answered FLUSH first),
    /// for whoever takes the commit lock next: the applier thread of
    /// `Array::spawn_flusher`, which sets this, or a test that wants the window reached.
    pub fn defer_in_place(&self, on: bool) {
        self.defer.store(on, Ordering::Relaxed);
    }

    /// Takes the commit lock, which every commit, rebuild or reshape group, allocation and
    /// journal retire holds, and first writes in place what the last commit left pending:
    /// whoever holds the lock sees the members as every txg so far left them, as before.
    pub(crate) fn commit_lock(&self) -> parking_lot::MutexGuard<'_, u64> {
        let g = self.cache.next_txg.lock();
        self.apply_pending();
        g
    }

    /// Writes the pending txg in place (the caller holds the commit lock), then lets its
    /// blocks leave the committing set. A failure does what a failed commit does: its
    /// blocks go back under the open set, so the next commit journals and applies them
    /// again (and until then the journal, which holds them durably, replays them at a
    /// restart); a member error that cannot be absorbed has poisoned the array.
    fn apply_pending(&self) {
        let Some(p) = self.pending.lock().take() else {
            return;
        };
        let result = self.apply_rows(p.rows, p.csums);
        if let Err(e) = &result {
            tracing::error!("writing a journaled txg in place failed: {e}");
        }
        self.end_commit(result.is_err());
    }

    /// Empties the committing set (its blocks put back under the open set if `failed`).
    pub(super) fn end_commit(&self, failed: bool) {
        let done = {
            let mut c = self.cache.committing.write();
            if failed {
                // Keep what could not be committed: blocks written since stay newer.
                let mut open = self.cache.open.lock();
                for (s, d) in c.extents() {
                    open.insert_under(s, d);
                }
            }
            self.cache.committing_bytes.store(0, Ordering::Release);
            std::mem::take(&mut *c)
        };
        // Its buffers are kept for later writes (what fits in the budget beside the open
        // set) or freed, outside the lock.
        let open = self.cache.open.lock().bytes();
        let room = self.cache.budget.saturating_sub(open);
        self.cache.bin.put(
            done.into_buffers(),
            usize::try_from(room).unwrap_or(usize::MAX),
        );
    }

    /// Writes a journaled txg in place: every row locked (in ascending order, as every
    /// taker of several row locks does), the checksums noted in the cache, then each
    /// member's writes handed to it as one list, all members at once. A reader that takes
    /// a row lock (a degraded read reconstructing from parity) sees each row either wholly
    /// before or wholly after; the data blocks themselves stay overlaid by the committing
    /// set until the commit ends.
    pub(super) fn apply_rows(
        &self,
        rows: Vec<(u32, u64, Vec<MemberWrite>)>,
        csum_writes: Vec<MemberWrite>,
    ) -> Result<()> {
        let mut keys: Vec<(u32, u64)> = rows.iter().map(|(i, r, _)| (*i, *r)).collect();
        keys.sort_unstable();
        keys.dedup();
        let _guards: Vec<_> = keys.iter().map(|&(i, r)| self.locks.lock(i, r)).collect();
        let members = self.members();
        if let Some(c) = &self.csums {
            // The cache says so before the entries reach the member (see `note_written`).
            for (_, _, writes) in &rows {
                c.note_written(writes, &members);
            }
        }
        let all = rows.into_iter().flat_map(|(_, _, w)| w).chain(csum_writes);
        self.apply_in_place(all)
    }

    /// Writes journaled writes in place, each member's as one list, all members at once; a
    /// member that fails is dropped, the rest go on.
    fn apply_in_place(&self, writes: impl IntoIterator<Item = MemberWrite>) -> Result<()> {
        let members = self.members();
        let mut lists: Vec<(u16, Dev, OwnedWrites)> = Vec::new();
        for w in writes {
            let Some(d) = members[w.member as usize].clone() else {
                continue;
            };
            match lists.iter_mut().find(|(m, ..)| *m == w.member) {
                Some((.., l)) => l.push((w.offset, w.data)),
                None => lists.push((w.member, d, vec![(w.offset, w.data)])),
            }
        }
        let mut first_err = None;
        for (_, r) in write_many_parallel(lists) {
            let Err(e) = r else { continue };
            if matches!(&e, Error::Io { source, .. } if is_no_space(source)) {
                // The journal holds this txg and its blocks go back to the open set:
                // the next commit journals and applies them again (restart replays).
                tracing::warn!("{e}: the commit is retried with the next flush");
                first_err.get_or_insert(e);
            } else if !self.absorb(&e) {
                self.poisoned
                    .store(true, std::sync::atomic::Ordering::Release);
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub(super) fn journal_and_apply(&self, txg: &mut TxgPlan, next: &mut u64) -> Result<()> {
        match self.journal_txg(txg, next)? {
            Some(j) => self.apply_rows(j.rows, j.csums),
            None => Ok(()),
        }
    }

    /// Journals the rows planned in `txg` as txg `next` (then advanced) and flushes every
    /// member: from its return the txg is durable. Gives back what is to be written in
    /// place (`None` when `txg` held nothing).
    pub(super) fn journal_txg(
        &self,
        txg: &mut TxgPlan,
        next: &mut u64,
    ) -> Result<Option<Journaled>> {
        if txg.rows.is_empty() {
            return Ok(None);
        }
        let area = self.journal.clone().expect("journal");
        let number = *next;
        *next += 1;
        // The checksum blocks these writes change are journaled with them.
        let csum_writes: Vec<MemberWrite> = match &self.csums {
            Some(c) => {
                let all: Vec<MemberWrite> = txg
                    .rows
                    .iter()
                    .flat_map(|(_, _, w)| w.iter().cloned())
                    .collect();
                c.plan(&all)
            }
            None => Vec::new(),
        };
        // Checksum entries go first in each share. A block's entry is `crc32c(block) ^
        // crc32c(zero block)`, so the block directly followed by its entry differs from
        // zeros by a CRC32C codeword: a torn record that lost both (a single-block write's
        // share) would still pass its payload CRC and replay zeros over the block.
        let mut shares: BTreeMap<u16, Vec<MemberWrite>> = BTreeMap::new();
        for writes in std::iter::once(csum_writes.as_slice())
            .chain(txg.rows.iter().map(|(_, _, w)| w.as_slice()))
        {
            for w in writes {
                let owner = if area.device.is_some() {
                    journal::EXTERNAL
                } else {
                    w.member
                };
                shares.entry(owner).or_default().push(w.clone());
            }
        }
        let participants: Vec<u16> = shares.keys().copied().collect();
        // Each member's record, all written at once.
        let mut records = Vec::new();
        for (m, writes) in shares {
            let d = match &area.device {
                Some(dev) => dev.clone(),
                None => match &self.members()[m as usize] {
                    Some(d) => d.clone(),
                    None => continue, // failed since the plan: its share is not needed
                },
            };
            let rec = SubRecord {
                txg: number,
                member: m,
                participants: participants.clone(),
                writes,
            };
            let bytes = journal::encode(self.uuid, &rec);
            records.push((m, d, vec![(area.half_offset(number), bytes)]));
        }
        for (_, r) in write_many_parallel(records) {
            if let Err(e) = r {
                // A member that fails now is recorded faulty before the journal flush, so
                // its missing share is never needed.
                if !self.absorb(&e) {
                    return Err(e);
                }
            }
        }
        // Journal durable (and the previous txg's in-place writes with it) before any
        // in-place write of this txg.
        loop {
            let mut to_flush: Vec<Option<Dev>> = self.members().to_vec();
            to_flush.push(area.device.clone());
            match flush_all(&to_flush) {
                Ok(()) => break,
                Err(e) if self.absorb(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        // From here the txg is durable in the journal: a failure must not leave the rows
        // half applied in memory's view, so members that fail are dropped and the rest go on.
        txg.bytes.clear();
        Ok(Some(Journaled {
            rows: std::mem::take(&mut txg.rows),
            csums: csum_writes,
        }))
    }
}
