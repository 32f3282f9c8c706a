//! Dirty blocks a commit cannot write: their chunk has no member left to hold them (a
//! `single` chunk whose member failed after the write was taken, before the commit). They
//! leave the commit, so the rest commits and the array keeps serving; their volume ranges
//! are recorded lost, so they read as EIO — never as the older data still on the members
//! that are there, nor as zeros. The commit still succeeds, but each volume the blocks
//! belong to has its error sequence bumped (`errseq.rs`): the next FLUSH of every client
//! that was connected fails, so none is told that writes it made are durable when they
//! are not. The same goes for blocks a commit did write to a chunk whose only member
//! failed before the commit ended, and for blocks of chunks a rebuild gives up.

use super::Txg;
use crate::error::Result;
use crate::events::EventKind;
use crate::member::Dev;
use crate::meta::chunk_intact;
use crate::ondisk::metadata::ArrayMeta;
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

    /// Records `lost` in the health (caller holds the commit lock), bumps the error
    /// sequence of the volumes it belongs to, and says so.
    pub(super) fn record_unwritten(&self, lost: Vec<(u64, u64)>) -> Result<()> {
        if lost.is_empty() {
            return Ok(());
        }
        let bytes: u64 = lost.iter().map(|r| r.1).sum();
        let mut st = self.store.lock();
        let mut meta = st.meta.clone();
        let chunks: Vec<usize> = lost
            .iter()
            .map(|&(o, _)| (o / self.chunk_size) as usize)
            .collect();
        let volumes = volumes_of(&meta, &chunks);
        meta.health.lost.extend(lost);
        meta.health.lost = merge_ranges(std::mem::take(&mut meta.health.lost));
        self.commit_meta(&mut st, meta)?;
        drop(st);
        // Only once the loss is recorded: a commit that fails before puts the blocks back
        // in the open set, and the next commit drops (and reports) them again.
        self.bump_volumes(&volumes);
        self.emit(
            EventKind::Unrecoverable,
            None,
            None,
            format!(
                "{bytes} bytes written but not yet committed belong to chunks whose only \
                 member is gone: they are lost (reads of them get EIO, and the next flush of \
                 each client connected gets EIO once)"
            ),
        );
        Ok(())
    }

    /// After a commit wrote `chunks` (caller holds the commit lock): those whose only
    /// member failed meanwhile lost what it wrote there with the rest of their data (they
    /// read as EIO, and a rebuild gives them up), so their volumes' error sequences are
    /// bumped as for blocks left out.
    pub(super) fn check_written(&self, chunks: &[usize]) {
        let members = self.members();
        let map = self.store.chunks();
        let gone: Vec<usize> = chunks
            .iter()
            .copied()
            .filter(|&i| {
                map.get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(|c| !chunk_intact(c, &members))
            })
            .collect();
        if gone.is_empty() {
            return;
        }
        self.bump_volumes(&volumes_of(&self.store.lock().meta, &gone));
        tracing::warn!(
            "a member failed while a commit wrote chunks {gone:?} (their only member): what \
             it wrote there is lost, the next flush of each client connected gets EIO once"
        );
    }

    /// Drops the dirty blocks of `chunks`, which a rebuild gives up (caller holds the
    /// commit lock, so nothing is being committed): written but never committed, they
    /// could only reach a fresh chunk whose range reads as EIO (recorded lost). Bumps the
    /// error sequences of their volumes (`meta`: the metadata naming the volumes) when
    /// there were any; returns their bytes.
    pub(crate) fn drop_dirty_of(&self, chunks: &[usize], meta: &ArrayMeta) -> u64 {
        let cs = self.chunk_size;
        let mut dropped = Vec::new();
        let mut bytes = 0;
        {
            let mut open = self.cache.open.lock();
            for &i in chunks {
                let (lo, hi) = (i as u64 * cs, (i as u64 + 1) * cs);
                let n: u64 = open.overlapping(lo, hi).map(|(_, d)| d.len() as u64).sum();
                if n > 0 {
                    open.discard(lo, hi);
                    bytes += n;
                    dropped.push(i);
                }
            }
        }
        self.bump_volumes(&volumes_of(meta, &dropped));
        bytes
    }

    /// Bumps the error sequence of each of `volumes` (see `errseq.rs`).
    fn bump_volumes(&self, volumes: &[u32]) {
        for &v in volumes {
            self.errseq.bump(v);
        }
    }
}

/// The ids of the volumes `chunks` belong to, each once.
fn volumes_of(meta: &ArrayMeta, chunks: &[usize]) -> Vec<u32> {
    let mut v: Vec<u32> = chunks
        .iter()
        .filter_map(|&i| meta.volume_of(i))
        .map(|v| v.id)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}
