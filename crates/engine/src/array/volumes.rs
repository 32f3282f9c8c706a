//! Volumes of an open array: creating, resizing, renaming and deleting them (each one
//! metadata commit), their I/O (volume bytes mapped along the volume's extents onto the
//! array's chunk map, then the array's own read and write paths), and what `volume list`
//! and `status` show of them.

use super::Array;
use crate::error::{Error, JobKind, Result};
use crate::events::EventKind;
use crate::layout::chunkmap::Template;
use crate::layout::volumes::{check_name, join_extents, place, truncate_extents, Volume};
use crate::meta::{raw_per_chunk, room_for, unwritten_reserved, SpaceUsage};
use crate::ondisk::format::{ChunkRaw, SliceRaw, SLOT_HEADER_LEN};
use crate::ondisk::metadata::ArrayMeta;
use crate::ondisk::volumes::MAX_VOLUMES;
use crate::units::now;
use serde::{Deserialize, Serialize};

/// How large a volume is to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeSize {
    Bytes(u64),
    /// As large as the free (unreserved) space allows at the volume's level.
    Max,
}

/// A volume to create.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    pub template: Template,
    pub size: VolumeSize,
    pub thin: bool,
}

/// What creating (or growing) a volume would take, and why it would be refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeForecast {
    pub name: String,
    /// Size in bytes (rounded up to 4 KiB).
    pub size: u64,
    pub chunks: u64,
    /// Raw bytes its chunks take at its level (reserved now unless thin).
    pub raw_needed: u64,
    /// Free (neither allocated nor reserved) raw bytes before and after.
    pub free_before: u64,
    pub free_after: u64,
    pub thin: bool,
    pub refusals: Vec<String>,
}

impl Array {
    /// The volumes as last committed.
    pub fn volume_list(&self) -> Vec<Volume> {
        self.store.committed().meta.volumes.clone()
    }

    /// The volume named `name`.
    pub fn volume_named(&self, name: &str) -> Result<Volume> {
        let vols = self.volume_list();
        vols.iter()
            .find(|v| v.name == name)
            .cloned()
            .ok_or_else(|| no_such_volume(name, &vols))
    }

    /// The volume with id `id` (`None`: deleted).
    pub fn volume_by_id(&self, id: u32) -> Option<Volume> {
        self.store
            .committed()
            .meta
            .volumes
            .iter()
            .find(|v| v.id == id)
            .cloned()
    }

    /// What creating `spec` would do (nothing is changed).
    pub fn plan_volume(&self, spec: &VolumeSpec) -> Result<VolumeForecast> {
        let meta = self.store.committed().meta.clone();
        self.volume_forecast(&meta, spec, None)
    }

    /// Creates a volume (one metadata commit). Refused, with the numbers, when a reserved
    /// volume does not fit beside what other volumes hold and were promised.
    pub fn create_volume(&self, spec: &VolumeSpec) -> Result<VolumeForecast> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let _commit = self.commit_lock();
        let mut st = self.store.lock();
        let f = self.volume_forecast(&st.meta, spec, None)?;
        if let Some(r) = f.refusals.first() {
            return Err(Error::NoSpace(format!(
                "cannot create volume {:?}: {r}",
                spec.name
            )));
        }
        let mut meta = st.meta.clone();
        let (extents, count) = place(&meta.volumes, meta.map.chunks.len(), f.chunks, None);
        meta.map.chunks.resize(count, None);
        let id = meta.next_volume_id;
        meta.next_volume_id += 1;
        meta.volumes.push(Volume {
            id,
            name: spec.name.clone(),
            template: spec.template,
            size: f.size,
            thin: spec.thin,
            extents,
            created: now(),
        });
        if meta.volumes.len() == 1 {
            meta.template = spec.template;
        }
        self.commit_meta(&mut st, meta)?;
        let usage = self.space_of(&st.meta);
        drop(st);
        self.note_space(usage);
        self.emit(
            EventKind::VolumeCreated,
            None,
            None,
            format!(
                "volume {:?} created: {} bytes, {}{}",
                spec.name,
                f.size,
                spec.template.level,
                if spec.thin { ", thin" } else { "" }
            ),
        );
        Ok(f)
    }

    /// The forecast for `spec`, or for growing volume `growing` (index into the volumes)
    /// to `spec.size`, against `meta`.
    fn volume_forecast(
        &self,
        meta: &ArrayMeta,
        spec: &VolumeSpec,
        growing: Option<usize>,
    ) -> Result<VolumeForecast> {
        if growing.is_none() {
            check_name(&spec.name).map_err(Error::Invalid)?;
            if meta.volumes.iter().any(|v| v.name == spec.name) {
                return Err(Error::Invalid(format!(
                    "a volume named {:?} already exists",
                    spec.name
                )));
            }
            if meta.volumes.len() >= MAX_VOLUMES {
                return Err(Error::Invalid(format!(
                    "the array holds {MAX_VOLUMES} volumes, the most it can"
                )));
            }
        }
        let t = &spec.template;
        t.validate()?;
        if t.stripe_unit > self.chunk_size {
            return Err(Error::Invalid(format!(
                "stripe unit {} is larger than the array's chunk size {}",
                t.stripe_unit, self.chunk_size
            )));
        }
        let cs = self.chunk_size;
        let (alloc, cand) = self.allocator_of(meta);
        let have = growing.map_or(0, |k| meta.volumes[k].chunk_count());
        let mut others = unwritten_reserved(meta);
        // Placed first: what reserved volumes were promised.
        let mut after_others = alloc.clone();
        for (tt, n) in &others {
            for _ in 0..*n {
                after_others.allocate(tt, cs, &cand);
            }
        }
        let size = match spec.size {
            VolumeSize::Bytes(0) => {
                return Err(Error::Invalid("a volume's size must be more than 0".into()))
            }
            VolumeSize::Bytes(b) => b.next_multiple_of(4096),
            VolumeSize::Max => {
                let more = after_others.count_fitting(t, cs, &cand, self.slot_room(meta));
                (have + more as u64) * cs
            }
        };
        let chunks = size.div_ceil(cs);
        let per = raw_per_chunk(&alloc, t, cs, &cand);
        let new_chunks = chunks.saturating_sub(have);
        let usage = self.space_of(meta);
        let raw_needed = if spec.thin { 0 } else { new_chunks * per };
        let mut refusals = Vec::new();
        if size == 0 {
            refusals.push(format!(
                "no room left for even one {} chunk of {cs} bytes",
                t.level
            ));
        }
        if !spec.thin {
            others.push((*t, new_chunks as usize));
            if !room_for(&alloc, &others, cs, &cand) {
                refusals.push(format!(
                    "{size} bytes at {} need {raw_needed} bytes of raw space; {} are free \
                     ({} raw, {} allocated, {} reserved for other volumes){}",
                    t.level,
                    usage.free,
                    usage.raw,
                    usage.allocated,
                    usage.reserved,
                    if usage.free >= raw_needed {
                        " and the members' sizes leave too little of it usable at this level"
                    } else {
                        ""
                    }
                ));
            }
        }
        if new_chunks as usize > self.slot_room(meta) {
            refusals.push(format!(
                "the metadata slot can map at most {} more chunks of {cs} bytes",
                self.slot_room(meta)
            ));
        }
        if (meta.map.chunks.len() as u64 + new_chunks) > u32::MAX as u64 {
            refusals.push("too many chunks".into());
        }
        Ok(VolumeForecast {
            name: spec.name.clone(),
            size,
            chunks,
            raw_needed,
            free_before: usage.free,
            free_after: usage.free.saturating_sub(raw_needed),
            thin: spec.thin,
            refusals,
        })
    }

    /// Chunks the metadata slot can still map once every chunk of every volume is written.
    fn slot_room(&self, meta: &ArrayMeta) -> usize {
        let width = self.members().len().max(1);
        let per_chunk = size_of::<ChunkRaw>() + width * size_of::<SliceRaw>();
        let unwritten: usize = meta
            .volumes
            .iter()
            .map(|v| {
                v.chunk_indexes()
                    .filter(|&i| meta.map.chunks.get(i).is_none_or(|c| c.is_none()))
                    .count()
            })
            .sum();
        let payload = meta.encode().len() + SLOT_HEADER_LEN + unwritten * per_chunk;
        (self.sb_layout.slot_size as usize).saturating_sub(payload) / per_chunk
    }

    /// Grows volume `name` to `size` (more chunks, placed in holes or past the end; one
    /// commit), or shrinks it when `force` (chunks past the new end are freed: their data
    /// is gone). Returns (old size, new size).
    pub fn resize_volume(&self, name: &str, size: VolumeSize, force: bool) -> Result<(u64, u64)> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let v = self.volume_named(name)?;
        let want = match size {
            VolumeSize::Bytes(0) => {
                return Err(Error::Invalid("a volume's size must be more than 0".into()))
            }
            VolumeSize::Bytes(b) => b.next_multiple_of(4096),
            VolumeSize::Max => u64::MAX,
        };
        if want < v.size {
            if !force {
                return Err(Error::Invalid(format!(
                    "volume {name:?} is {} bytes: making it smaller loses the data past {want} \
                     (a filesystem on it would lose its end); use --force to do it anyway",
                    v.size
                )));
            }
            return self.shrink_volume(&v, want).map(|n| (v.size, n));
        }
        self.zero_tail(&v, want)?;
        let _commit = self.commit_lock();
        let mut st = self.store.lock();
        let k = st
            .meta
            .volumes
            .iter()
            .position(|x| x.id == v.id)
            .ok_or_else(|| no_such_volume(name, &st.meta.volumes))?;
        let cur = st.meta.volumes[k].clone();
        let spec = VolumeSpec {
            name: cur.name.clone(),
            template: cur.template,
            size: if want == u64::MAX {
                VolumeSize::Max
            } else {
                VolumeSize::Bytes(want)
            },
            thin: cur.thin,
        };
        let f = self.volume_forecast(&st.meta, &spec, Some(k))?;
        if let Some(r) = f.refusals.first() {
            return Err(Error::NoSpace(format!("cannot grow volume {name:?}: {r}")));
        }
        if f.size <= cur.size {
            return Ok((cur.size, cur.size));
        }
        let mut meta = st.meta.clone();
        let more = f.chunks.saturating_sub(cur.chunk_count());
        let last_end = cur.extents.last().map(|&(a, n)| a + n);
        let (extents, count) = place(&meta.volumes, meta.map.chunks.len(), more, last_end);
        meta.map
            .chunks
            .resize(count.max(meta.map.chunks.len()), None);
        let vol = &mut meta.volumes[k];
        join_extents(&mut vol.extents, &extents);
        vol.size = f.size;
        self.commit_meta(&mut st, meta)?;
        let usage = self.space_of(&st.meta);
        drop(st);
        self.note_space(usage);
        self.emit(
            EventKind::VolumeResized,
            None,
            None,
            format!(
                "volume {name:?} grown from {} to {} bytes",
                cur.size, f.size
            ),
        );
        Ok((cur.size, f.size))
    }

    /// A shrink to a size inside a chunk keeps that chunk with its bytes past the new end;
    /// before the volume grows over them again (to `want`) they are made zeros, durably, so
    /// that a grown region never shows what a shrink cut off.
    fn zero_tail(&self, v: &Volume, want: u64) -> Result<()> {
        let cs = self.chunk_size;
        let end = (v.chunk_count() * cs).min(want);
        if end <= v.size {
            return Ok(());
        }
        let zeros = vec![0u8; (end - v.size) as usize];
        let chunks = self.store.chunks();
        let mut any = false;
        for (g, n) in v.map(cs, v.size, end - v.size) {
            if chunks.get((g / cs) as usize).is_some_and(|c| c.is_some()) {
                self.write_at(&zeros[..n as usize], g)?;
                any = true;
            }
        }
        drop(chunks);
        if any {
            self.flush()?;
        }
        Ok(())
    }

    fn shrink_volume(&self, v: &Volume, want: u64) -> Result<u64> {
        self.refuse_while_moving("shrink a volume")?;
        let cs = self.chunk_size;
        let id = v.id;
        self.release_chunks(|meta| {
            let vol = meta
                .volumes
                .iter_mut()
                .find(|x| x.id == id)
                .ok_or_else(|| Error::Invalid("the volume was deleted meanwhile".into()))?;
            let dropped = truncate_extents(&mut vol.extents, want.div_ceil(cs));
            vol.size = want;
            Ok(dropped)
        })?;
        self.emit(
            EventKind::VolumeResized,
            None,
            None,
            format!("volume {:?} shrunk from {} to {want} bytes", v.name, v.size),
        );
        Ok(want)
    }

    /// Deletes volume `name` and frees its chunks (their data is gone). The caller makes
    /// sure no client uses it (the server refuses while one is connected).
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let v = self.volume_named(name)?;
        self.refuse_while_moving("delete a volume")?;
        let id = v.id;
        self.release_chunks(|meta| {
            let k = meta
                .volumes
                .iter()
                .position(|x| x.id == id)
                .ok_or_else(|| Error::Invalid("the volume was deleted meanwhile".into()))?;
            let gone = meta.volumes.remove(k);
            Ok(gone.chunk_indexes().collect())
        })?;
        self.drop_volume_io(id);
        self.errseq.forget(id);
        self.emit(
            EventKind::VolumeDeleted,
            None,
            None,
            format!("volume {name:?} deleted ({} bytes)", v.size),
        );
        Ok(())
    }

    /// Renames a volume (its id, data and exports' devices stay).
    pub fn rename_volume(&self, old: &str, new: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        check_name(new).map_err(Error::Invalid)?;
        let mut st = self.store.lock();
        if st.meta.volumes.iter().any(|v| v.name == new) {
            return Err(Error::Invalid(format!(
                "a volume named {new:?} already exists"
            )));
        }
        let mut meta = st.meta.clone();
        let vols = meta.volumes.clone();
        let v = meta
            .volumes
            .iter_mut()
            .find(|v| v.name == old)
            .ok_or_else(|| no_such_volume(old, &vols))?;
        v.name = new.to_string();
        self.commit_meta(&mut st, meta)
    }

    /// Chunks move under a reshape or rebuild: freeing them meanwhile is refused.
    fn refuse_while_moving(&self, what: &str) -> Result<()> {
        let j = self.jobs.lock();
        for kind in [JobKind::Reshape, JobKind::Rebuild] {
            if j.running(kind).is_some() {
                return Err(Error::Invalid(format!(
                    "cannot {what} while a {kind} is running; wait for it or pause it"
                )));
            }
        }
        drop(j);
        if self.reshape_pending() {
            return Err(Error::Invalid(format!(
                "cannot {what} while a reshape is under way"
            )));
        }
        Ok(())
    }

    /// The array's raw space, as last committed.
    pub fn space_usage(&self) -> SpaceUsage {
        self.space()
    }
}

fn no_such_volume(name: &str, vols: &[Volume]) -> Error {
    let names: Vec<&str> = vols.iter().map(|v| v.name.as_str()).collect();
    if names.is_empty() {
        Error::Invalid(format!(
            "no volume named {name:?}: the array has no volumes"
        ))
    } else {
        Error::Invalid(format!(
            "no volume named {name:?} (volumes: {})",
            names.join(", ")
        ))
    }
}
