//! Volume I/O and what `status` shows of each volume. A volume's bytes map along its
//! extents onto the array's virtual disk, whose read and write paths (buffer, journal,
//! redirect, degraded reads, lost ranges) then apply unchanged.

use super::status::LostRange;
use super::Array;
use crate::error::{Error, Result};
use crate::layout::volumes::Volume;
use crate::layout::Level;
use crate::meta::{spare_failures, template_tolerance};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Requests and bytes read and written through one volume's device (its NBD export),
/// counted with relaxed atomics by whoever does the I/O; the device takes its counters
/// once ([`Array::volume_io`]), so counting takes no lock per request.
#[derive(Debug, Default)]
pub struct VolumeIo {
    reads: AtomicU64,
    writes: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
}

/// What a [`VolumeIo`] has counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeIoCounts {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
}

impl VolumeIo {
    /// One read of `bytes` answered.
    pub fn count_read(&self, bytes: u64) {
        self.reads.fetch_add(1, Relaxed);
        self.read_bytes.fetch_add(bytes, Relaxed);
    }

    /// One write of `bytes` done.
    pub fn count_write(&self, bytes: u64) {
        self.writes.fetch_add(1, Relaxed);
        self.written_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn counts(&self) -> VolumeIoCounts {
        VolumeIoCounts {
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            read_bytes: self.read_bytes.load(Relaxed),
            written_bytes: self.written_bytes.load(Relaxed),
        }
    }
}

/// Every volume's counters by id, made when a device first asks for them.
#[derive(Default)]
pub(super) struct VolumeIoTable(parking_lot::Mutex<HashMap<u32, Arc<VolumeIo>>>);

/// What `volume list` and `status` show of one volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub id: u32,
    pub name: String,
    pub level: Level,
    pub copies: usize,
    pub stripe_unit: u64,
    pub size: u64,
    /// Volume bytes in chunks allocated (written at least once).
    pub allocated: u64,
    /// Takes space as written (no reservation).
    pub thin: bool,
    /// Member failures its layout survives.
    pub tolerance: usize,
    /// Further member failures it survives now, with the members present (0 when one more
    /// loses data, or when data is already lost).
    pub can_lose: usize,
    /// "ok", "degraded" (redundancy missing) or "failed" (some data unreadable).
    pub health: String,
    /// Volume byte ranges that cannot be read now (their chunk lost too many members)
    /// or are recorded lost; reads there fail with EIO.
    pub lost: Vec<LostRange>,
}

impl Array {
    /// Volume `id`'s I/O counters, shared by every device of the volume (taken once per
    /// device, not per request). They live as long as the array is open, or until the
    /// volume is deleted.
    pub fn volume_io(&self, id: u32) -> Arc<VolumeIo> {
        self.volume_io.0.lock().entry(id).or_default().clone()
    }

    /// What each volume's devices have counted, by volume id (volumes no device has
    /// served yet are not there).
    pub fn volume_io_counts(&self) -> HashMap<u32, VolumeIoCounts> {
        let t = self.volume_io.0.lock();
        t.iter().map(|(&id, io)| (id, io.counts())).collect()
    }

    /// Forgets a deleted volume's counters.
    pub(super) fn drop_volume_io(&self, id: u32) {
        self.volume_io.0.lock().remove(&id);
    }

    /// The array byte ranges for volume bytes `[offset, offset+len)` of volume `id`.
    fn volume_pieces(&self, id: u32, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        // Per request: looked up in the committed table, not cloned.
        let st = self.store.committed();
        let v = st
            .meta
            .volumes
            .iter()
            .find(|v| v.id == id)
            .ok_or_else(|| Error::Invalid(format!("volume {id} no longer exists")))?;
        match offset.checked_add(len) {
            Some(end) if end <= v.size => Ok(v.map(self.chunk_size, offset, len)),
            _ => Err(Error::Invalid(format!(
                "I/O at {offset}+{len} is beyond the end of volume {:?} ({} bytes)",
                v.name, v.size
            ))),
        }
    }

    /// Reads volume `id`.
    pub fn volume_read(&self, id: u32, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut at = 0usize;
        for (g, n) in self.volume_pieces(id, offset, buf.len() as u64)? {
            self.read_at(&mut buf[at..at + n as usize], g)?;
            at += n as usize;
        }
        Ok(())
    }

    /// Writes volume `id` (durable after [`Array::flush`]).
    pub fn volume_write(&self, id: u32, buf: &[u8], offset: u64) -> Result<()> {
        let mut at = 0usize;
        for (g, n) in self.volume_pieces(id, offset, buf.len() as u64)? {
            self.write_at(&buf[at..at + n as usize], g)?;
            at += n as usize;
        }
        Ok(())
    }

    /// [`Array::volume_write`] that may keep `buf` (see [`Array::write_owned`]).
    pub fn volume_write_owned(&self, id: u32, buf: Vec<u8>, offset: u64) -> Result<Vec<Vec<u8>>> {
        let pieces = self.volume_pieces(id, offset, buf.len() as u64)?;
        if let [(g, _)] = pieces[..] {
            return self.write_owned(buf, g);
        }
        self.volume_write(id, &buf, offset)?;
        Ok(vec![buf])
    }

    /// A discard of volume bytes: on a thin volume, chunks it covers whole are freed
    /// (they read as zeros and their space goes back to the array). Elsewhere a hint that
    /// changes nothing (a reserved volume keeps its space).
    pub fn volume_trim(&self, id: u32, offset: u64, len: u64) -> Result<()> {
        self.volume_pieces(id, offset, len)?;
        let v = self
            .volume_by_id(id)
            .ok_or_else(|| Error::Invalid(format!("volume {id} no longer exists")))?;
        if !v.thin || self.read_only {
            return Ok(());
        }
        let cs = self.chunk_size;
        let end = offset + len;
        let chunks = self.store.chunks();
        // Volume chunk k covers [k·cs, min((k+1)·cs, size)); whole when the trim covers that.
        let whole: Vec<usize> = v
            .chunk_indexes()
            .enumerate()
            .filter(|&(k, idx)| {
                let (lo, hi) = (k as u64 * cs, ((k as u64 + 1) * cs).min(v.size));
                offset <= lo && hi <= end && chunks.get(idx).is_some_and(|c| c.is_some())
            })
            .map(|(_, idx)| idx)
            .collect();
        if whole.is_empty() {
            return Ok(());
        }
        self.release_chunks(|meta| {
            // Only chunks still this volume's (a resize may have raced).
            let vol = meta.volumes.iter().find(|x| x.id == id);
            Ok(whole
                .iter()
                .copied()
                .filter(|&i| vol.is_some_and(|x| x.owns(i)))
                .collect())
        })?;
        Ok(())
    }

    /// Runs of allocated (`true`) and never-written (`false`) volume bytes, at chunk
    /// granularity, for NBD block status.
    pub fn volume_allocation_runs(&self, id: u32, offset: u64, len: u64) -> Vec<(u64, bool)> {
        let Ok(pieces) = self.volume_pieces(id, offset, len) else {
            return vec![(len, true)];
        };
        let mut runs: Vec<(u64, bool)> = Vec::new();
        for (g, n) in pieces {
            for (l, a) in self.allocation_runs(g, n) {
                match runs.last_mut() {
                    Some((pl, pa)) if *pa == a => *pl += l,
                    _ => runs.push((l, a)),
                }
            }
        }
        runs
    }

    /// Every volume as `volume list` and `status` show it.
    pub fn volume_statuses(&self) -> Vec<VolumeStatus> {
        let st = self.store.committed();
        let members = self.members();
        let cs = self.chunk_size;
        st.meta
            .volumes
            .iter()
            .map(|v| {
                let mut allocated = 0u64;
                let mut can_lose = usize::MAX;
                let mut degraded = false;
                let mut lost: Vec<LostRange> = Vec::new();
                for (k, idx) in v.chunk_indexes().enumerate() {
                    let Some(c) = st.meta.map.chunks.get(idx).cloned().flatten() else {
                        continue;
                    };
                    allocated += cs.min(v.size.saturating_sub(k as u64 * cs));
                    match spare_failures(&c, &members) {
                        Some(n) => can_lose = can_lose.min(n),
                        None => {
                            can_lose = 0;
                            let lo = k as u64 * cs;
                            push_range(&mut lost, lo, cs.min(v.size - lo));
                        }
                    }
                    degraded |= c
                        .slices
                        .iter()
                        .any(|s| members[s.member as usize].is_none());
                }
                for &(o, l) in &st.meta.health.lost {
                    for (vo, vl) in global_to_volume(v, cs, o, l) {
                        push_range(&mut lost, vo, vl);
                    }
                }
                lost.sort_by_key(|r| r.offset);
                let tolerance = template_tolerance(&v.template);
                let unavailable = members.iter().filter(|d| d.is_none()).count();
                if can_lose == usize::MAX {
                    can_lose = tolerance.saturating_sub(unavailable);
                }
                let health = if !lost.is_empty() {
                    "failed"
                } else if degraded {
                    "degraded"
                } else {
                    "ok"
                };
                VolumeStatus {
                    id: v.id,
                    name: v.name.clone(),
                    level: v.template.level,
                    copies: v.template.copies,
                    stripe_unit: v.template.stripe_unit,
                    size: v.size,
                    allocated,
                    thin: v.thin,
                    tolerance,
                    can_lose,
                    health: health.to_string(),
                    lost,
                }
            })
            .collect()
    }
}

/// The volume byte ranges of array bytes `[o, o+l)` that volume `v` holds.
fn global_to_volume(v: &Volume, cs: u64, o: u64, l: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let end = o + l;
    let mut at = o;
    while at < end {
        let chunk_end = (at / cs + 1) * cs;
        let n = chunk_end.min(end) - at;
        if let Some(vo) = v.volume_offset(cs, at) {
            out.push((vo, n.min(v.size.saturating_sub(vo))));
        }
        at += n;
    }
    out.retain(|&(_, n)| n > 0);
    out
}

fn push_range(lost: &mut Vec<LostRange>, offset: u64, len: u64) {
    if let Some(last) = lost.last_mut() {
        if last.offset + last.len == offset {
            last.len += len;
            return;
        }
    }
    lost.push(LostRange { offset, len });
}
