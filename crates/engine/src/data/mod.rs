//! The data layer: reading and writing the members' data through the chunk map — one
//! stripe module (`stripe`: pieces of chunks by stripe row, read-modify-write, reconstruct),
//! repair (`repair`: a slice position's content from the others, used by rebuild, scrub and
//! heal), self-healing reads (`heal`), per-block checksums (`csum`), first allocation of a
//! chunk, and attaching members.
//!
//! Owns: the parity kernels, the stripe-row locks, the checksum cache and the chunk gate.
//! Lock order: chunk gate, then a stripe-row lock, then the metadata layer's locks.

mod attach;
mod csum;
mod fullchunk;
mod heal;
mod locks;
mod repair;
mod stripe;

pub(crate) use csum::Csums;
pub(crate) use locks::StripeLocks;
pub(crate) use repair::{Need, Scratch};
pub(crate) use stripe::Seg;

use crate::error::{Error, Result};
use crate::layout::chunkmap::Chunk;
use crate::member::{flush_all, write, zero, Dev};
use crate::meta::{room_for, unwritten_reserved, Meta};
use damocles_parity::Parity;
use parking_lot::RwLock;
use std::ops::Deref;
use std::sync::Arc;

/// The data layer of an open array, over its metadata layer.
pub struct Data {
    meta: Meta,
    pub(crate) parity: Parity,
    pub(crate) locks: StripeLocks,
    /// Per-block checksums (arrays created with the journal).
    pub(crate) csums: Option<Csums>,
    /// Direct (journal-less) writes hold it shared; a chunk being rebuilt, exclusively.
    pub(crate) chunk_gate: RwLock<()>,
}

impl Deref for Data {
    type Target = Meta;
    fn deref(&self) -> &Meta {
        &self.meta
    }
}

impl Data {
    /// The data layer over `meta`; `checksums`: the superblock says blocks have CRCs.
    pub(crate) fn new(meta: Meta, checksums: bool) -> Data {
        let csums = checksums.then(|| {
            let st = meta.store.lock();
            Csums::new(
                meta.sb_layout.data_offset,
                st.meta.members.iter().map(|m| m.size).collect(),
            )
        });
        Data {
            meta,
            parity: Parity::best(),
            locks: StripeLocks::default(),
            csums,
            chunk_gate: RwLock::new(()),
        }
    }

    /// Whether per-block checksums are kept (they need the journal).
    pub fn checksums_enabled(&self) -> bool {
        self.csums.is_some()
    }

    /// `Txg::chunk_for_write` for a caller that holds the commit lock (or has no
    /// checksums).
    pub(crate) fn chunk_for_write_locked(&self, idx: usize) -> Result<Arc<Chunk>> {
        if let Some(c) = self.store.chunk(idx) {
            return Ok(c);
        }
        let mut st = self.store.lock();
        if let Some(c) = self.store.chunk(idx) {
            return Ok(c);
        }
        let members = self.members();
        let (mut alloc, all) = self.allocator_of(&st.meta);
        let template = st.meta.template_for(idx);
        let volume = st.meta.volume_of(idx).cloned();
        if volume.is_none() {
            return Err(Error::Invalid(format!(
                "array bytes at {} belong to no volume",
                idx as u64 * self.chunk_size
            )));
        }
        // Always the same greedy step over all members that `create` used to size the array,
        // so the advertised capacity stays reachable; while degraded, a new chunk is born
        // degraded (its slice on the missing member is written by a later rebuild).
        let all = crate::meta::candidates_for(&template, &all, &st.meta, &members);
        let Some(chunk) = alloc.allocate(&template, self.chunk_size, &all) else {
            drop(st);
            return Err(self.out_of_space(volume.as_ref(), idx));
        };
        if let Some(v) = volume.as_ref().filter(|v| v.thin) {
            // A thin volume may not take what reserved volumes were promised.
            if !room_for(&alloc, &unwritten_reserved(&st.meta), self.chunk_size, &all) {
                drop(st);
                return Err(Error::NoSpace(format!(
                    "thin volume {:?} found no free space: what is left is reserved for \
                     other volumes",
                    v.name
                )));
            }
        }
        for s in &chunk.slices {
            if let Some(d) = &members[s.member as usize] {
                zero(d.as_ref(), s.offset, chunk.slice_len)?;
                // Space freed by a relocation still has its old checksums.
                if let Some(c) = &self.csums {
                    for w in c.zero_range(s.member, d, s.offset, chunk.slice_len) {
                        write(d.as_ref(), &w.data, w.offset)?;
                    }
                }
            }
        }
        let holders: Vec<Option<Dev>> = chunk
            .slices
            .iter()
            .map(|s| members[s.member as usize].clone())
            .collect();
        flush_all(&holders)?;
        let chunk = Arc::new(chunk);
        let mut meta = st.meta.clone();
        meta.map.chunks[idx] = Some(chunk.clone());
        self.commit_meta(&mut st, meta)?;
        let usage = self.space_of(&st.meta);
        drop(st);
        self.note_space(usage);
        if chunk
            .slices
            .iter()
            .any(|s| members[s.member as usize].is_none())
        {
            // Born degraded: a failed member's slice waits for the rebuild.
            self.request_rebuild();
        }
        Ok(chunk)
    }
}
