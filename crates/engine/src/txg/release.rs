//! Freeing chunks: a trim of whole chunks of a thin volume, a volume shrunk or deleted.
//! The chunks leave the map in one metadata commit, made with nothing buffered for them
//! and no commit running; if a journal is kept, it is retired right after, before any
//! write can allocate the freed slices — a journal record naming them, replayed after a
//! crash, would otherwise write old data over a chunk that then lives there.

use super::Txg;
use crate::error::{Error, Result};
use crate::ondisk::metadata::ArrayMeta;
use std::sync::atomic::Ordering;

impl Txg {
    /// Applies `edit` to the metadata and frees the chunks it returns, in one commit.
    /// `edit` runs under the commit lock and the metadata state; an error from it changes
    /// nothing. Buffered writes to the freed chunks are dropped (they belong to a volume
    /// range that no longer exists, or was trimmed). Returns the chunks freed.
    pub(crate) fn release_chunks(
        &self,
        edit: impl FnOnce(&mut ArrayMeta) -> Result<Vec<usize>>,
    ) -> Result<Vec<usize>> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        // What is buffered goes in place first, so the journal's records are all durable
        // in place before the retire below.
        self.commit()?;
        let next = self.commit_lock();
        let _gate = self.chunk_gate.write();
        let mut st = self.store.lock();
        let mut meta = st.meta.clone();
        let freed = edit(&mut meta)?;
        let cs = self.chunk_size;
        let mut any = false;
        {
            let mut open = self.cache.open.lock();
            for &idx in &freed {
                let (lo, hi) = (idx as u64 * cs, (idx as u64 + 1) * cs);
                open.discard(lo, hi);
                if let Some(slot) = meta.map.chunks.get_mut(idx) {
                    any |= slot.take().is_some();
                }
                // Lost ranges there read as zeros from now on.
                meta.health.forget_lost(lo, hi);
            }
        }
        // Map entries past the last index any volume holds go, so the map ends where the
        // volumes do.
        let end = meta
            .volumes
            .iter()
            .flat_map(|v| v.extents.iter().map(|&(f, n)| f as usize + n as usize))
            .max()
            .unwrap_or(0);
        if meta.map.chunks[end.min(meta.map.chunks.len())..]
            .iter()
            .all(Option::is_none)
        {
            meta.map.chunks.truncate(end);
        }
        if meta
            .health
            .scrub_cursor
            .is_some_and(|c| c as usize > meta.map.chunks.len())
        {
            meta.health.scrub_cursor = None;
        }
        self.commit_meta(&mut st, meta)?;
        drop(st);
        if any {
            if let Err(e) = self.retire_journal_at(*next) {
                // Freed slices may still be named by journal records: nothing may be
                // allocated there before a restart replays and retires the journal.
                self.poisoned.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(freed)
    }
}
