//! The volume table (format version 2): after the health record, a 16-byte table header,
//! then one 128-byte record per volume, each followed by its extents. Byte layout:
//! `docs/format.md`, "Volume table".

use super::format::Reader;
use crate::error::{Error, Result};
use crate::layout::volumes::{check_name, Volume, MAX_VOLUME_NAME};
use crate::layout::{Level, Template};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Most volumes one array holds.
pub const MAX_VOLUMES: usize = 1024;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct VolumeTableRaw {
    pub volume_count: U32,
    /// The id the next volume created gets (ids are never reused).
    pub next_id: U32,
    pub reserved: [u8; 8],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct VolumeRaw {
    pub name: [u8; 64],
    pub id: U32,
    pub level: u8,
    pub copies: u8,
    /// Bit 0: thin (no reservation).
    pub flags: u8,
    pub reserved0: u8,
    pub stripe_unit: U32,
    pub extent_count: U32,
    pub size: U64,
    pub created: U64,
    pub reserved: [u8; 32],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct ExtentRaw {
    pub first: U32,
    pub count: U32,
}

const _: () = {
    assert!(size_of::<VolumeTableRaw>() == 16);
    assert!(size_of::<VolumeRaw>() == 128);
    assert!(size_of::<ExtentRaw>() == 8);
};

/// Appends the table to `out`.
pub fn encode(out: &mut Vec<u8>, volumes: &[Volume], next_id: u32) {
    let mut t = VolumeTableRaw::new_zeroed();
    t.volume_count.set(volumes.len() as u32);
    t.next_id.set(next_id);
    out.extend_from_slice(t.as_bytes());
    for v in volumes {
        let mut r = VolumeRaw::new_zeroed();
        let name = v.name.as_bytes();
        let n = name.len().min(MAX_VOLUME_NAME);
        r.name[..n].copy_from_slice(&name[..n]);
        r.id.set(v.id);
        r.level = v.template.level.code();
        r.copies = v.template.copies as u8;
        r.flags = u8::from(v.thin);
        r.stripe_unit.set(v.template.stripe_unit as u32);
        r.extent_count.set(v.extents.len() as u32);
        r.size.set(v.size);
        r.created.set(v.created);
        out.extend_from_slice(r.as_bytes());
        for &(first, count) in &v.extents {
            let mut e = ExtentRaw::new_zeroed();
            e.first.set(first);
            e.count.set(count);
            out.extend_from_slice(e.as_bytes());
        }
    }
}

/// Decodes and checks the table: names valid and unique, ids unique and below `next_id`,
/// sizes that fit their extents, extents inside `[0, chunk_count)` and disjoint.
pub fn decode(
    member: &str,
    r: &mut Reader<'_>,
    chunk_count: usize,
    chunk_size: u64,
) -> Result<(Vec<Volume>, u32)> {
    let bad = |m: String| Error::format(member, format!("metadata: volume table: {m}"));
    let t: VolumeTableRaw = r.take()?;
    let count = t.volume_count.get() as usize;
    let next_id = t.next_id.get();
    if count > MAX_VOLUMES {
        return Err(bad(format!("{count} volumes (at most {MAX_VOLUMES})")));
    }
    let mut volumes: Vec<Volume> = Vec::with_capacity(count);
    let mut taken: Vec<(u32, u32)> = Vec::new();
    for _ in 0..count {
        let v: VolumeRaw = r.take()?;
        let len = v
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MAX_VOLUME_NAME);
        let name = std::str::from_utf8(&v.name[..len])
            .map_err(|_| bad("a volume name is not UTF-8".into()))?
            .to_string();
        check_name(&name).map_err(bad)?;
        if volumes.iter().any(|o| o.name == name) {
            return Err(bad(format!("two volumes are named {name:?}")));
        }
        let id = v.id.get();
        if id >= next_id || volumes.iter().any(|o| o.id == id) {
            return Err(bad(format!("volume {name:?}: bad id {id}")));
        }
        let template = template(&name, &v).map_err(bad)?;
        if v.flags & !1 != 0 {
            return Err(bad(format!(
                "volume {name:?}: unknown flags {:#x}",
                v.flags
            )));
        }
        let n_ext = v.extent_count.get() as usize;
        if n_ext > chunk_count.max(1) {
            return Err(bad(format!("volume {name:?}: {n_ext} extents")));
        }
        let mut extents = Vec::with_capacity(n_ext.min(1024));
        for _ in 0..n_ext {
            let e: ExtentRaw = r.take()?;
            let (f, c) = (e.first.get(), e.count.get());
            if c == 0 || f as u64 + c as u64 > chunk_count as u64 {
                return Err(bad(format!("volume {name:?}: extent {f}+{c} out of range")));
            }
            extents.push((f, c));
            taken.push((f, c));
        }
        let vol = Volume {
            id,
            name,
            template,
            size: v.size.get(),
            thin: v.flags & 1 != 0,
            extents,
            created: v.created.get(),
        };
        let chunks = vol.chunk_count();
        let size = vol.size;
        if size == 0
            || !size.is_multiple_of(4096)
            || size > chunks * chunk_size
            || size <= chunks.saturating_sub(1) * chunk_size
        {
            return Err(bad(format!(
                "volume {:?}: size {size} does not match its {chunks} chunks",
                vol.name
            )));
        }
        volumes.push(vol);
    }
    taken.sort_unstable();
    if taken
        .windows(2)
        .any(|w| w[0].0 as u64 + w[0].1 as u64 > w[1].0 as u64)
    {
        return Err(bad("two volumes hold one chunk".into()));
    }
    Ok((volumes, next_id))
}

fn template(name: &str, v: &VolumeRaw) -> std::result::Result<Template, String> {
    let level = Level::from_code(v.level)
        .ok_or_else(|| format!("volume {name:?}: unknown level {}", v.level))?;
    let t = Template {
        level,
        copies: v.copies as usize,
        stripe_unit: v.stripe_unit.get() as u64,
    };
    t.validate().map_err(|e| format!("volume {name:?}: {e}"))?;
    Ok(t)
}
