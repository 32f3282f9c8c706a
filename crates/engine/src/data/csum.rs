//! Per-block checksums: a CRC-32C for every 4 KiB block of every member's data area, data
//! and parity alike, kept in a checksum area at the end of the member.
//!
//! A member's data area is `[data_offset, end)`; its checksum area starts at `end` and holds
//! one little-endian u32 per data block, in block order, rounded up to whole 4 KiB blocks.
//! An entry stores `crc32c(block) ^ crc32c(zero block)`, so a zeroed area describes zeroed
//! data and fresh space needs no initialisation beyond zeroing.
//!
//! Checksum blocks change only through the write journal (a commit journals the checksum
//! blocks its writes touch along with the writes), or under the commit lock for writes that
//! bypass the journal (rebuild, scrub repairs, zeroing at allocation) — so a crash never
//! leaves a checksum that disagrees with durable data. In memory, a cache of checksum blocks
//! is the truth while the array is open; an entry changes in the same row-locked section as
//! the in-place write of its block.

use crate::member::{read, Dev};
use crate::ondisk::csum::{entry, PER_BLOCK};
use crate::units::{MemberWrite, BLOCK};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Cached checksum blocks before the cache is dropped at the next commit (64 MiB of
/// checksums, covering 64 GiB of members).
const CACHE_LIMIT: usize = 16384;

type CsumBlock = Arc<Vec<u32>>;

pub(crate) struct Csums {
    pub data_offset: u64,
    /// Per member: where its data area ends (and its checksum area starts).
    pub ends: RwLock<Vec<u64>>,
    cache: Mutex<HashMap<(u16, u64), CsumBlock>>,
    /// Bumped when the cache is dropped, so a load that raced with it is not inserted.
    epoch: AtomicU64,
}

impl Csums {
    pub fn new(data_offset: u64, ends: Vec<u64>) -> Csums {
        Csums {
            data_offset,
            ends: RwLock::new(ends),
            cache: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
        }
    }

    /// (checksum block index, entry index in it) of the data block at `off` on `member`,
    /// if `off` is in its data area.
    fn locate(&self, member: u16, off: u64) -> Option<(u64, usize)> {
        let end = *self.ends.read().get(member as usize)?;
        if off < self.data_offset || off >= end {
            return None;
        }
        let k = (off - self.data_offset) / BLOCK;
        Some((k / PER_BLOCK, (k % PER_BLOCK) as usize))
    }

    fn block_offset(&self, member: u16, cb: u64) -> u64 {
        self.ends.read()[member as usize] + cb * BLOCK
    }

    /// A checksum block, from the cache or the member (`None` if it cannot be read).
    fn get(&self, member: u16, cb: u64, dev: &Dev) -> Option<CsumBlock> {
        if let Some(b) = self.cache.lock().get(&(member, cb)) {
            return Some(b.clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut raw = vec![0u8; BLOCK as usize];
        read(dev.as_ref(), &mut raw, self.block_offset(member, cb)).ok()?;
        let v: CsumBlock = Arc::new(
            raw.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
        let mut cache = self.cache.lock();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return Some(v);
        }
        Some(cache.entry((member, cb)).or_insert(v).clone())
    }

    /// Whether every whole 4 KiB block of `data` (at member offset `off`) matches its
    /// checksum: `Some(index of the first bad block)` if one does not. Blocks whose checksum
    /// cannot be read are not judged.
    pub fn first_bad(&self, member: u16, dev: &Dev, off: u64, data: &[u8]) -> Option<usize> {
        // One cache lookup per checksum block, not per data block.
        let mut held: Option<(u64, Option<CsumBlock>)> = None;
        for (k, blk) in data.chunks_exact(BLOCK as usize).enumerate() {
            let at = off + k as u64 * BLOCK;
            let Some((cb, e)) = self.locate(member, at) else {
                continue;
            };
            if held.as_ref().is_none_or(|(c, _)| *c != cb) {
                held = Some((cb, self.get(member, cb, dev)));
            }
            let Some((_, Some(b))) = &held else {
                continue;
            };
            if b[e] != entry(blk) {
                return Some(k);
            }
        }
        None
    }

    /// The checksum entry writes that go with `writes` (whole 4 KiB blocks in data areas):
    /// one write per run of consecutive entries, to be journaled and applied with them.
    /// Entry-sized writes (not whole checksum blocks) matter at replay: a replayed txg then
    /// puts back only its own blocks' entries, never older values of entries that were
    /// changed since outside the journal (a rebuild's new slice, zeroing at allocation).
    pub fn plan(&self, writes: &[MemberWrite]) -> Vec<MemberWrite> {
        let mut out: Vec<MemberWrite> = Vec::new();
        for w in writes {
            let Some(end) = self.ends.read().get(w.member as usize).copied() else {
                continue;
            };
            for (k, blk) in w.data.chunks_exact(BLOCK as usize).enumerate() {
                let at = w.offset + k as u64 * BLOCK;
                if at < self.data_offset || at >= end {
                    continue;
                }
                let eoff = end + (at - self.data_offset) / BLOCK * 4;
                let e = entry(blk).to_le_bytes();
                match out.last_mut() {
                    Some(p) if p.member == w.member && p.offset + p.data.len() as u64 == eoff => {
                        p.data.extend_from_slice(&e)
                    }
                    _ => out.push(MemberWrite {
                        member: w.member,
                        offset: eoff,
                        data: e.to_vec(),
                    }),
                }
            }
        }
        out
    }

    /// Records in the cache the checksums of `writes`, now in place (their entries reach
    /// the member right after: the cache must already say so, or a reader loading the
    /// checksum block from the member in between would see old entries).
    pub fn note_written(&self, writes: &[MemberWrite], members: &[Option<Dev>]) {
        for w in writes {
            let Some(dev) = members.get(w.member as usize).and_then(|d| d.as_ref()) else {
                continue;
            };
            // Entries first, then one cache update per checksum block.
            let mut by_block: Vec<(u64, Vec<(usize, u32)>)> = Vec::new();
            for (k, blk) in w.data.chunks_exact(BLOCK as usize).enumerate() {
                let at = w.offset + k as u64 * BLOCK;
                let Some((cb, e)) = self.locate(w.member, at) else {
                    continue;
                };
                match by_block.last_mut() {
                    Some((c, v)) if *c == cb => v.push((e, entry(blk))),
                    _ => by_block.push((cb, vec![(e, entry(blk))])),
                }
            }
            for (cb, entries) in by_block {
                if let Some(b) = self.get(w.member, cb, dev) {
                    let mut cache = self.cache.lock();
                    let slot = Arc::make_mut(cache.entry((w.member, cb)).or_insert(b));
                    for (e, v) in entries {
                        slot[e] = v;
                    }
                }
            }
        }
    }

    /// Sets entries of `[off, off+len)` on `member` to "zero block" in the cache (for space
    /// that was just zeroed); returns the checksum block writes that make it durable.
    pub fn zero_range(&self, member: u16, dev: &Dev, off: u64, len: u64) -> Vec<MemberWrite> {
        let mut touched = Vec::new();
        let mut at = off;
        while at < off + len {
            if let Some((cb, e)) = self.locate(member, at) {
                if let Some(b) = self.get(member, cb, dev) {
                    let mut cache = self.cache.lock();
                    let slot = cache.entry((member, cb)).or_insert(b);
                    Arc::make_mut(slot)[e] = 0;
                    if touched.last() != Some(&cb) {
                        touched.push(cb);
                    }
                }
            }
            at += BLOCK;
        }
        self.block_writes(member, &touched)
    }

    /// Sets the cached checksums of `data` written at `off` on `member` (outside the journal,
    /// under the commit lock); returns the checksum blocks touched, for [`Csums::block_writes`].
    pub fn record(&self, member: u16, dev: &Dev, off: u64, data: &[u8]) -> Vec<u64> {
        let mut touched: Vec<u64> = Vec::new();
        for (k, blk) in data.chunks_exact(BLOCK as usize).enumerate() {
            let Some((cb, e)) = self.locate(member, off + k as u64 * BLOCK) else {
                continue;
            };
            let Some(b) = self.get(member, cb, dev) else {
                continue;
            };
            let mut cache = self.cache.lock();
            let slot = cache.entry((member, cb)).or_insert(b);
            Arc::make_mut(slot)[e] = entry(blk);
            if touched.last() != Some(&cb) {
                touched.push(cb);
            }
        }
        touched
    }

    /// Writes that put the cached checksum blocks `cbs` of `member` on the member.
    pub fn block_writes(&self, member: u16, cbs: &[u64]) -> Vec<MemberWrite> {
        let mut cbs = cbs.to_vec();
        cbs.sort_unstable();
        cbs.dedup();
        let cache = self.cache.lock();
        cbs.into_iter()
            .filter_map(|cb| {
                cache.get(&(member, cb)).map(|v| MemberWrite {
                    member,
                    offset: self.block_offset(member, cb),
                    data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                })
            })
            .collect()
    }

    /// Called at the start of a commit (under the commit lock): bounds the cache.
    pub fn trim(&self) {
        let mut cache = self.cache.lock();
        if cache.len() > CACHE_LIMIT {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            cache.clear();
        }
    }
}
