//! Volumes: named virtual disks in one array. Each volume owns runs of chunk indexes
//! (extents) in the array's chunk map and has its own template; volume byte `o` lies in
//! the volume's `o / chunk_size`-th chunk, counted along its extents. Extents never move:
//! a volume grows by taking more indexes (at the end, or in a hole a deleted volume left),
//! so a resize never renumbers a chunk other writes or jobs may be using.

use super::chunkmap::{Allocator, ChunkMap, Template};
use serde::Serialize;

/// Longest volume name.
pub const MAX_VOLUME_NAME: usize = 64;

/// One volume of an array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Stable within the array: names may change, the id does not (exports hold it).
    pub id: u32,
    pub name: String,
    /// What this volume's new chunks are made of.
    pub template: Template,
    /// Size in bytes (a multiple of 4 KiB, at most the chunks of its extents).
    pub size: u64,
    /// Takes space only as it is written (no reservation).
    pub thin: bool,
    /// Runs `(first chunk index, chunk count)` in volume order.
    pub extents: Vec<(u32, u32)>,
    /// Unix time of creation.
    pub created: u64,
}

impl Volume {
    /// Chunks its extents hold.
    pub fn chunk_count(&self) -> u64 {
        self.extents.iter().map(|&(_, n)| n as u64).sum()
    }

    /// Whether array chunk `idx` belongs to this volume.
    pub fn owns(&self, idx: usize) -> bool {
        self.extents
            .iter()
            .any(|&(f, n)| (f as usize..f as usize + n as usize).contains(&idx))
    }

    /// The array chunk indexes of this volume, in volume order.
    pub fn chunk_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        self.extents
            .iter()
            .flat_map(|&(f, n)| f as usize..f as usize + n as usize)
    }

    /// Splits volume bytes `[offset, offset+len)` into pieces of array (global) bytes:
    /// `(global offset, len)`, in order. The range must lie inside the volume's chunks.
    pub fn map(&self, chunk_size: u64, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let (mut off, end) = (offset, offset + len);
        let mut base = 0u64; // volume bytes before the current extent
        for &(first, n) in &self.extents {
            let ext_len = n as u64 * chunk_size;
            if off < base + ext_len && off < end {
                let within = off - base;
                let take = (ext_len - within).min(end - off);
                let global = first as u64 * chunk_size + within;
                match out.last_mut() {
                    Some((g, l)) if *g + *l == global => *l += take,
                    _ => out.push((global, take)),
                }
                off += take;
            }
            base += ext_len;
            if off >= end {
                break;
            }
        }
        out
    }

    /// The volume byte where array byte `global` lies, if this volume holds it.
    pub fn volume_offset(&self, chunk_size: u64, global: u64) -> Option<u64> {
        let mut base = 0u64;
        for &(first, n) in &self.extents {
            let (lo, hi) = (
                first as u64 * chunk_size,
                (first as u64 + n as u64) * chunk_size,
            );
            if (lo..hi).contains(&global) {
                return Some(base + global - lo);
            }
            base += hi - lo;
        }
        None
    }
}

/// Checks a volume name: 1–64 characters of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_VOLUME_NAME {
        return Err(format!(
            "volume name {name:?} must be 1 to {MAX_VOLUME_NAME} characters long"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "volume name {name:?} holds {c:?}: only letters, digits, '.', '_' and '-' may be used"
        ));
    }
    Ok(())
}

/// The name of the volume an array is created with (and a version-1 array's whole virtual
/// disk gets): the array's name where that is a valid volume name, else "damocles".
pub fn name_for_array(array_name: &str) -> String {
    if check_name(array_name).is_ok() {
        return array_name.to_string();
    }
    let cleaned: String = array_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_VOLUME_NAME)
        .collect();
    if cleaned.is_empty() {
        // What an unnamed array's export was called before volumes.
        "damocles".to_string()
    } else {
        cleaned
    }
}

/// Chunk indexes `[0, chunk_count)` not held by any volume, as runs `(first, count)`.
pub fn holes(volumes: &[Volume], chunk_count: usize) -> Vec<(u32, u32)> {
    let mut used: Vec<(u32, u32)> = volumes.iter().flat_map(|v| v.extents.clone()).collect();
    used.sort_unstable();
    let mut out = Vec::new();
    let mut cur = 0u64;
    for (f, n) in used {
        if (f as u64) > cur {
            out.push((cur as u32, (f as u64 - cur) as u32));
        }
        cur = cur.max(f as u64 + n as u64);
    }
    if (chunk_count as u64) > cur {
        out.push((cur as u32, (chunk_count as u64 - cur) as u32));
    }
    out
}

/// Picks `want` chunk indexes for a volume from the holes first, then past the end of the
/// map: returns the extents and the map's new chunk count. `after`: the volume's last
/// extent end, preferred so that a growing volume stays in one extent when it can.
pub fn place(
    volumes: &[Volume],
    chunk_count: usize,
    want: u64,
    after: Option<u32>,
) -> (Vec<(u32, u32)>, usize) {
    let mut left = want;
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut holes = holes(volumes, chunk_count);
    // The hole right after the volume's own end first, then the others in index order.
    if let Some(a) = after {
        if let Some(k) = holes.iter().position(|&(f, _)| f == a) {
            let h = holes.remove(k);
            holes.insert(0, h);
        }
    }
    for (f, n) in holes {
        if left == 0 {
            break;
        }
        let take = (n as u64).min(left) as u32;
        out.push((f, take));
        left -= take as u64;
    }
    let mut count = chunk_count;
    if left > 0 {
        out.push((count as u32, left as u32));
        count += left as usize;
    }
    (out, count)
}

/// Appends `new` extents to `ext`, joining runs that touch.
pub fn join_extents(ext: &mut Vec<(u32, u32)>, new: &[(u32, u32)]) {
    for &(f, n) in new {
        match ext.last_mut() {
            Some((lf, ln)) if *lf as u64 + *ln as u64 == f as u64 => *ln += n,
            _ => ext.push((f, n)),
        }
    }
}

/// Drops chunks from the end of `ext` until it holds `keep` chunks; returns the dropped
/// chunk indexes.
pub fn truncate_extents(ext: &mut Vec<(u32, u32)>, keep: u64) -> Vec<usize> {
    let mut dropped = Vec::new();
    let mut have: u64 = ext.iter().map(|&(_, n)| n as u64).sum();
    while have > keep {
        let Some((f, n)) = ext.last_mut() else { break };
        let cut = ((have - keep) as u32).min(*n);
        let start = *f as usize + (*n - cut) as usize;
        dropped.extend(start..start + cut as usize);
        *n -= cut;
        have -= cut as u64;
        if *n == 0 {
            ext.pop();
        }
    }
    dropped
}

/// Chunks each reserved (not thin) volume has not written yet in `map`, with its template.
pub fn unwritten_reserved(volumes: &[Volume], map: &ChunkMap) -> Vec<(Template, usize)> {
    volumes
        .iter()
        .filter(|v| !v.thin)
        .map(|v| {
            let n = v
                .chunk_indexes()
                .filter(|&i| map.chunks.get(i).is_none_or(|c| c.is_none()))
                .count();
            (v.template, n)
        })
        .filter(|&(_, n)| n > 0)
        .collect()
}

/// Whether every chunk in `needs` still fits in what `alloc` leaves free, placed by the
/// allocator's own greedy step (so mixed sizes and wide stripes are counted as they will
/// really be laid out).
pub fn room_for(
    alloc: &Allocator,
    needs: &[(Template, usize)],
    chunk_size: u64,
    candidates: &[u16],
) -> bool {
    let mut a = alloc.clone();
    for &(t, n) in needs {
        for _ in 0..n {
            if a.allocate(&t, chunk_size, candidates).is_none() {
                return false;
            }
        }
    }
    true
}

/// The template chunk `idx` is laid out with: its volume's (`default` where no volume
/// holds it).
pub fn template_for(volumes: &[Volume], idx: usize, default: Template) -> Template {
    volumes
        .iter()
        .find(|v| v.owns(idx))
        .map_or(default, |v| v.template)
}

/// What `volume list` and `status` show of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VolumeSummary {
    pub id: u32,
    pub name: String,
    pub level: super::Level,
    pub copies: usize,
    pub stripe_unit: u64,
    pub size: u64,
    /// Virtual bytes in allocated chunks.
    pub allocated: u64,
    pub thin: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Level;

    fn vol(extents: Vec<(u32, u32)>) -> Volume {
        Volume {
            id: 1,
            name: "v".into(),
            template: Template {
                level: Level::Raid1,
                copies: 2,
                stripe_unit: 65536,
            },
            size: extents.iter().map(|e| e.1 as u64).sum::<u64>() * 100,
            thin: false,
            extents,
            created: 0,
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("vms").is_ok());
        assert!(check_name("a.b_c-9").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("é").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
        assert!(check_name(&"x".repeat(64)).is_ok());
        assert_eq!(name_for_array("my array"), "my-array");
        assert_eq!(name_for_array(""), "damocles");
    }

    #[test]
    fn volume_bytes_map_along_the_extents() {
        let v = vol(vec![(5, 2), (1, 1)]);
        assert_eq!(v.map(100, 0, 300), vec![(500, 200), (100, 100)]);
        assert_eq!(v.map(100, 150, 100), vec![(650, 50), (100, 50)]);
        assert_eq!(v.map(100, 250, 10), vec![(150, 10)]);
        assert_eq!(v.volume_offset(100, 650), Some(150));
        assert_eq!(v.volume_offset(100, 150), Some(250));
        assert_eq!(v.volume_offset(100, 0), None);
        assert!(v.owns(6) && v.owns(1) && !v.owns(0) && !v.owns(7));
        assert_eq!(v.chunk_indexes().collect::<Vec<_>>(), vec![5, 6, 1]);
    }

    #[test]
    fn placing_fills_holes_then_extends() {
        let a = vol(vec![(0, 2)]);
        let mut b = vol(vec![(4, 2)]);
        b.id = 2;
        assert_eq!(holes(&[a.clone(), b.clone()], 8), vec![(2, 2), (6, 2)]);
        let (ext, count) = place(&[a.clone(), b.clone()], 8, 5, None);
        assert_eq!(ext, vec![(2, 2), (6, 2), (8, 1)]);
        assert_eq!(count, 9);
        // A growing volume takes the hole after its own end first.
        let (ext, _) = place(&[a.clone(), b.clone()], 8, 1, Some(6));
        assert_eq!(ext, vec![(6, 1)]);
        let mut e = vec![(0, 2)];
        join_extents(&mut e, &[(2, 3), (9, 1)]);
        assert_eq!(e, vec![(0, 5), (9, 1)]);
        let dropped = truncate_extents(&mut e, 3);
        assert_eq!(dropped, vec![9, 3, 4]);
        assert_eq!(e, vec![(0, 3)]);
    }
}
