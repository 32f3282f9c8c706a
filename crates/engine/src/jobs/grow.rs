//! Growing the volume: more chunks at the end of the virtual disk, as many as the members
//! hold next to what is written. The new chunks are unwritten (they read as zeros and are
//! allocated on first write, like every chunk), so growing is one metadata commit; the
//! limit is what keeps that safe: every chunk not written yet, old or new, must still find
//! room, placed as `chunk_for_write` will place it, and the metadata slot must hold the map
//! once all of them are written. Clients see the new size on their next connection.

use super::Jobs;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::layout::chunkmap::{Allocator, ChunkMap};
use crate::layout::volumes::join_extents;
use crate::meta::{alloc_candidates, member_spaces, Health};
use crate::ondisk::format::{ChunkRaw, SliceRaw, SLOT_HEADER_LEN};
use crate::ondisk::metadata::{ArrayMeta, MAX_CHUNKS};
use serde::{Deserialize, Serialize};

/// What `grow` would do, or did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrowForecast {
    /// The volume size now, and after the growth.
    pub size: u64,
    pub size_after: u64,
    /// The most the volume can be with the data laid out as it is now.
    pub max_now: u64,
    /// About the most it could be after a balance (chunks as wide as the members allow).
    pub max_balanced: u64,
    /// Why it would be refused (nothing is changed then).
    pub refusals: Vec<String>,
}

impl Jobs {
    /// The most chunks the volume can have with `meta`'s map as it is (see the module doc).
    /// Less than the current count when the unwritten chunks already do not all fit.
    /// `map`: the layout to count from (`meta.map`, or an empty map for a fresh layout).
    pub(crate) fn chunk_limit(&self, meta: &ArrayMeta, map: &ChunkMap) -> usize {
        let candidates = alloc_candidates(meta);
        let per_chunk = size_of::<ChunkRaw>() + candidates.len().max(1) * size_of::<SliceRaw>();
        let payload = meta.encode().len() + SLOT_HEADER_LEN;
        let room = (self.sb_layout.slot_size as usize).saturating_sub(payload);
        let bound = (meta.map.allocated().count() + room / per_chunk)
            .min(MAX_CHUNKS)
            .min(u32::MAX as usize);
        let allocated = map.allocated().count();
        let spaces = member_spaces(&meta.members, self.sb_layout.data_offset);
        let fit = Allocator::new(&spaces, map).count_fitting(
            &meta.template,
            self.chunk_size,
            &candidates,
            bound.saturating_sub(allocated),
        );
        allocated + fit
    }

    /// What growing the volume to `size` bytes (rounded down to whole chunks; `None`: as
    /// large as the members allow now) would do.
    pub fn grow_forecast(&self, size: Option<u64>) -> Result<GrowForecast> {
        let meta = self.store.lock().meta.clone();
        let cs = self.chunk_size;
        let now = meta.map.chunks.len();
        let limit = self.chunk_limit(&meta, &meta.map).max(now);
        // After a balance: every chunk laid out afresh on the members that stay.
        let fresh = self.chunk_limit(&meta, &ChunkMap::new(cs, 0)).max(limit);
        let want = match size {
            Some(s) => (s / cs) as usize,
            None => limit,
        };
        let human = |c: usize| format!("{} bytes", c as u64 * cs);
        let mut refusals = Vec::new();
        let balance_hint = || {
            if fresh > limit {
                format!(
                    "; a balance would make room for about {} (damocles balance --grow)",
                    human(fresh)
                )
            } else {
                String::new()
            }
        };
        if meta.volumes.len() != 1 {
            refusals.push(format!(
                "the array holds {} volumes: grow one with `damocles volume resize NAME --size SIZE`",
                meta.volumes.len()
            ));
        } else if self.health() != Health::Ok {
            refusals.push(
                "the array is not healthy: rebuild (or replace the failed member) first"
                    .to_string(),
            );
        } else if self.reshape_pending() {
            refusals.push(
                "a reshape is under way: grow when it has finished (or start it with --grow)"
                    .to_string(),
            );
        } else if size.is_some_and(|s| s < cs) || want < now {
            refusals.push(format!(
                "the volume is {} and cannot shrink (a filesystem on it would lose its end)",
                human(now)
            ));
        } else if want == now {
            refusals.push(format!(
                "the volume is already {}, all the members hold as laid out now{}",
                human(now),
                balance_hint()
            ));
        } else if want > limit {
            refusals.push(format!(
                "the members hold at most {} as laid out now{}",
                human(limit),
                balance_hint()
            ));
        }
        Ok(GrowForecast {
            size: now as u64 * cs,
            size_after: want.max(now) as u64 * cs,
            max_now: limit as u64 * cs,
            max_balanced: fresh as u64 * cs,
            refusals,
        })
    }

    /// Grows the volume (see [`Jobs::grow_forecast`]); refused with the reason when it
    /// cannot. Returns what was done.
    pub fn grow(&self, size: Option<u64>) -> Result<GrowForecast> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let f = self.grow_forecast(size)?;
        if let Some(r) = f.refusals.first() {
            return Err(Error::Invalid(format!("cannot grow: {r}")));
        }
        let want = (f.size_after / self.chunk_size) as usize;
        // As `chunk_for_write`: commit lock, then the metadata state.
        let _commit = self.commit_lock();
        let mut st = self.store.lock();
        // Checked again under the lock: writes may have allocated chunks meanwhile.
        if want > self.chunk_limit(&st.meta, &st.meta.map) {
            return Err(Error::Invalid(
                "the members filled up meanwhile; try again".to_string(),
            ));
        }
        let mut meta = st.meta.clone();
        grow_only_volume(&mut meta, want);
        self.commit_meta(&mut st, meta)?;
        drop(st);
        self.emit(
            EventKind::VolumeGrown,
            None,
            None,
            format!("volume grown from {} to {} bytes", f.size, f.size_after),
        );
        Ok(f)
    }

    /// At the end of a reshape started with `grow`: the volume takes what the members now
    /// hold. `meta` is the metadata about to be committed; returns the new size if it grew.
    pub(crate) fn grow_after_reshape(&self, meta: &mut ArrayMeta) -> Option<(u64, u64)> {
        if !meta.grow_after {
            return None;
        }
        meta.grow_after = false;
        let now = meta.map.chunks.len();
        let limit = self.chunk_limit(meta, &meta.map);
        if limit <= now || meta.volumes.len() != 1 {
            return None;
        }
        grow_only_volume(meta, limit);
        Some((now as u64 * self.chunk_size, limit as u64 * self.chunk_size))
    }
}

/// Grows the map to `want` chunks, all of them the only volume's.
fn grow_only_volume(meta: &mut ArrayMeta, want: usize) {
    let now = meta.map.chunks.len();
    if want <= now {
        return;
    }
    meta.map.chunks.resize(want, None);
    if let [v] = meta.volumes.as_mut_slice() {
        join_extents(&mut v.extents, &[(now as u32, (want - now) as u32)]);
        v.size = v.chunk_count() * meta.map.chunk_size;
    }
}
