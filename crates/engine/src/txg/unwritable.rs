//! Dirty blocks a commit cannot write: their chunk has no member left to hold them (a
//! `single` chunk whose member failed after the write was taken, before the commit). They
//! leave the commit, so the rest commits and the array keeps serving; their volume ranges
//! are recorded lost, so they read as EIO — never as the older data still on the members
//! that are there, nor as zeros.

use super::Txg;
use crate::error::Result;
use crate::events::EventKind;
use crate::member::Dev;
use crate::meta::chunk_intact;
use crate::units::merge_ranges;

/// A commit's pieces: (chunk, offset in chunk, bytes).
pub(super) type Piece<'a> = (usize, u64, &'a [u8]);

impl Txg {
    /// Takes the pieces of chunks that cannot be written with `members` out of `pieces`;
    /// returns their volume ranges.
    pub(super) fn drop_unwritable(
        &self,
        pieces: &mut Vec<Piece<'_>>,
        members: &[Option<Dev>],
    ) -> Vec<(u64, u64)> {
        let c = self.chunk_size;
        let mut lost = Vec::new();
        pieces.retain(|&(idx, co, d)| {
            let keep = self
                .store
                .chunk(idx)
                .is_none_or(|ch| chunk_intact(&ch, members));
            if !keep {
                lost.push((idx as u64 * c + co, d.len() as u64));
            }
            keep
        });
        lost
    }

    /// Records `lost` in the health (caller holds the commit lock) and says so.
    pub(super) fn record_unwritten(&self, lost: Vec<(u64, u64)>) -> Result<()> {
        if lost.is_empty() {
            return Ok(());
        }
        let bytes: u64 = lost.iter().map(|r| r.1).sum();
        let mut st = self.store.lock();
        let mut meta = st.meta.clone();
        meta.health.lost.extend(lost);
        meta.health.lost = merge_ranges(std::mem::take(&mut meta.health.lost));
        self.commit_meta(&mut st, meta)?;
        drop(st);
        self.emit(
            EventKind::Unrecoverable,
            None,
            None,
            format!(
                "{bytes} bytes written but not yet committed belong to chunks whose only \
                 member is gone: they are lost (reads of them get EIO)"
            ),
        );
        Ok(())
    }
}
