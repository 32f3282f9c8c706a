//! The chunk map: the virtual disk is a row of equal-sized chunks, each with its own profile
//! and slices on members, allocated on first write. The allocator places slices on the
//! members with the most free space, as btrfs does, so mixed sizes give full capacity.

use super::profile::{Level, Profile};
use std::sync::Arc;

/// A piece of one member holding one slice of a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    pub member: u16,
    pub offset: u64,
}

/// An allocated chunk: profile plus one slice per position (each on a distinct member).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub profile: Profile,
    pub slice_len: u64,
    pub slices: Vec<Slice>,
}

/// What new chunks are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Template {
    pub level: Level,
    pub copies: usize,
    pub stripe_unit: u64,
}

impl Template {
    /// The chunk profile of this template at its narrowest width.
    pub fn narrowest(&self) -> Profile {
        Profile {
            level: self.level,
            width: self.level.min_width(self.copies),
            copies: self.copies,
            stripe_unit: self.stripe_unit,
        }
    }

    /// A template is valid when its narrowest chunk profile is.
    pub fn validate(&self) -> crate::error::Result<()> {
        self.narrowest().validate()
    }
}

#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct ChunkMap {
    pub chunk_size: u64,
    pub chunks: Vec<Option<Arc<Chunk>>>,
}

impl ChunkMap {
    pub fn new(chunk_size: u64, chunk_count: usize) -> ChunkMap {
        ChunkMap {
            chunk_size,
            chunks: vec![None; chunk_count],
        }
    }

    pub fn virtual_size(&self) -> u64 {
        self.chunk_size * self.chunks.len() as u64
    }

    /// Bytes of slices on `member`.
    pub fn used_on(&self, member: usize) -> u64 {
        self.allocated()
            .filter(|(_, c)| c.slices.iter().any(|s| s.member as usize == member))
            .map(|(_, c)| c.slice_len)
            .sum()
    }

    pub fn allocated(&self) -> impl Iterator<Item = (usize, &Arc<Chunk>)> {
        self.chunks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
    }
}

/// A member's usable data area, as the allocator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberSpace {
    pub member: u16,
    pub start: u64,
    pub end: u64,
}

/// Free extents per member, derived from the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocator {
    /// (member, sorted disjoint free extents [start, end))
    free: Vec<(u16, Vec<(u64, u64)>)>,
    /// Each member's usable area [start, end), in the order of `free`.
    bounds: Vec<(u64, u64)>,
}

impl Allocator {
    pub fn new(members: &[MemberSpace], map: &ChunkMap) -> Allocator {
        let mut free = Vec::new();
        for m in members {
            let mut used: Vec<(u64, u64)> = map
                .allocated()
                .flat_map(|(_, c)| {
                    c.slices
                        .iter()
                        .filter(|s| s.member == m.member)
                        .map(|s| (s.offset, s.offset + c.slice_len))
                })
                .collect();
            used.sort_unstable();
            let mut ext = Vec::new();
            let mut cur = m.start;
            for (s, e) in used {
                if s > cur {
                    ext.push((cur, s.min(m.end)));
                }
                cur = cur.max(e);
            }
            if cur < m.end {
                ext.push((cur, m.end));
            }
            ext.retain(|(s, e)| e > s);
            free.push((m.member, ext));
        }
        let bounds = members.iter().map(|m| (m.start, m.end)).collect();
        Allocator { free, bounds }
    }

    /// Gives `chunk`'s slices back as free space: the allocator then is what
    /// [`Allocator::new`] makes of the same map without that chunk (as long as the chunk is
    /// one of the map's, and the map's slices do not overlap, which decoding ensures). Lets
    /// a planner ask "where would this chunk go afresh?" without rebuilding the free lists
    /// from the whole map for every chunk.
    pub fn release(&mut self, chunk: &Chunk) {
        for s in &chunk.slices {
            let Some(i) = self.free.iter().position(|(m, _)| *m == s.member) else {
                continue;
            };
            let (lo, hi) = self.bounds[i];
            let (a, b) = (s.offset.max(lo), (s.offset + chunk.slice_len).min(hi));
            if b <= a {
                continue;
            }
            let ext = &mut self.free[i].1;
            let at = ext.partition_point(|&(x, _)| x < a);
            ext.insert(at, (a, b));
            // Join with the neighbours it touches, as `new` would have left them one extent.
            if at + 1 < ext.len() && ext[at + 1].0 <= ext[at].1 {
                ext[at].1 = ext[at].1.max(ext[at + 1].1);
                ext.remove(at + 1);
            }
            if at > 0 && ext[at].0 <= ext[at - 1].1 {
                ext[at - 1].1 = ext[at - 1].1.max(ext[at].1);
                ext.remove(at);
            }
        }
    }

    /// Takes `chunk`'s slices out of the free space, as [`Allocator::new`] would for a map
    /// that also held it. A reshape group pins the old places of the chunks it has moved
    /// but not yet committed: they stay live until the commit.
    pub fn reserve(&mut self, chunk: &Chunk) {
        for s in &chunk.slices {
            let Some(i) = self.free.iter().position(|(m, _)| *m == s.member) else {
                continue;
            };
            let (a, b) = (s.offset, s.offset + chunk.slice_len);
            let mut kept = Vec::with_capacity(self.free[i].1.len() + 1);
            for &(x, y) in &self.free[i].1 {
                if y <= a || b <= x {
                    kept.push((x, y));
                    continue;
                }
                if x < a {
                    kept.push((x, a));
                }
                if b < y {
                    kept.push((b, y));
                }
            }
            self.free[i].1 = kept;
        }
    }

    pub fn free_bytes(&self, member: u16) -> u64 {
        self.free
            .iter()
            .find(|(m, _)| *m == member)
            .map_or(0, |(_, e)| e.iter().map(|(s, e)| e - s).sum())
    }

    fn largest_extent(ext: &[(u64, u64)]) -> u64 {
        ext.iter().map(|(s, e)| e - s).max().unwrap_or(0)
    }

    /// Allocates one chunk of `chunk_size` virtual bytes on members from `candidates`, as wide
    /// as the members with room allow. `None` when it does not fit.
    pub fn allocate(&mut self, t: &Template, chunk_size: u64, candidates: &[u16]) -> Option<Chunk> {
        let mut pool: Vec<usize> = (0..self.free.len())
            .filter(|&i| candidates.contains(&self.free[i].0))
            .collect();
        // Most free space first; ties go to the lower member index so layouts are repeatable.
        pool.sort_by_key(|&i| {
            let (m, ext) = &self.free[i];
            (
                std::cmp::Reverse(ext.iter().map(|(s, e)| e - s).sum::<u64>()),
                *m,
            )
        });
        let min = t.level.min_width(t.copies);
        // A single chunk is one slice: on the member with the most free space that has
        // room, so members of mixed sizes all fill up.
        let max = t.level.max_width(t.copies).unwrap_or(pool.len().min(255));
        for width in (min..=max).rev() {
            if t.level == Level::Raid10 && !width.is_multiple_of(t.copies) {
                continue;
            }
            let profile = Profile {
                level: t.level,
                width,
                copies: t.copies,
                stripe_unit: t.stripe_unit,
            };
            let slice_len = profile.slice_len(chunk_size);
            let chosen: Vec<usize> = pool
                .iter()
                .copied()
                .filter(|&i| Self::largest_extent(&self.free[i].1) >= slice_len)
                .take(width)
                .collect();
            if chosen.len() < width {
                continue;
            }
            let mut slices = Vec::with_capacity(width);
            for i in chosen {
                let (member, ext) = &mut self.free[i];
                let k = ext.iter().position(|(s, e)| e - s >= slice_len)?;
                let offset = ext[k].0;
                ext[k].0 += slice_len;
                if ext[k].0 == ext[k].1 {
                    ext.remove(k);
                }
                slices.push(Slice {
                    member: *member,
                    offset,
                });
            }
            return Some(Chunk {
                profile,
                slice_len,
                slices,
            });
        }
        None
    }

    /// One slice of `len` bytes on the candidate with the most free space that has room.
    pub fn allocate_slice(&mut self, len: u64, candidates: &[u16]) -> Option<Slice> {
        let i = (0..self.free.len())
            .filter(|&i| candidates.contains(&self.free[i].0))
            .filter(|&i| Self::largest_extent(&self.free[i].1) >= len)
            .max_by_key(|&i| {
                let (m, ext) = &self.free[i];
                (
                    ext.iter().map(|(s, e)| e - s).sum::<u64>(),
                    std::cmp::Reverse(*m),
                )
            })?;
        let (member, ext) = &mut self.free[i];
        let k = ext.iter().position(|(s, e)| e - s >= len)?;
        let offset = ext[k].0;
        ext[k].0 += len;
        if ext[k].0 == ext[k].1 {
            ext.remove(k);
        }
        Some(Slice {
            member: *member,
            offset,
        })
    }

    /// How many chunks fit if all are allocated from `candidates` (capacity planning).
    pub fn count_fitting(
        &self,
        t: &Template,
        chunk_size: u64,
        candidates: &[u16],
        cap: usize,
    ) -> usize {
        let mut sim = self.clone();
        let mut n = 0;
        while n < cap && sim.allocate(t, chunk_size, candidates).is_some() {
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: u64 = 1 << 20;

    fn capacity(level: Level, sizes_units: &[u64]) -> u64 {
        let members: Vec<MemberSpace> = sizes_units
            .iter()
            .enumerate()
            .map(|(i, s)| MemberSpace {
                member: i as u16,
                start: 0,
                end: s * 64 * U,
            })
            .collect();
        let map = ChunkMap::new(4 * U, 0);
        let alloc = Allocator::new(&members, &map);
        let t = Template {
            level,
            copies: level.default_copies(),
            stripe_unit: 64 << 10,
        };
        let ids: Vec<u16> = (0..members.len() as u16).collect();
        alloc.count_fitting(&t, 4 * U, &ids, usize::MAX) as u64 * 4 * U
    }

    #[test]
    fn mixed_sizes_use_full_capacity() {
        // Units of 64 MiB stand in for "1 TB".
        let unit = 64 * U;
        assert_eq!(capacity(Level::Raid1, &[1, 2, 3]), 3 * unit);
        assert_eq!(capacity(Level::Raid0, &[1, 2]), 3 * unit);
        assert_eq!(capacity(Level::Single, &[1, 2, 3, 5]), 11 * unit);
        assert_eq!(capacity(Level::Single, &[4]), 4 * unit);
        // raid5 over 1+1+2: 3-wide chunks until the small ones are full; ~2 units
        // (chunks of 4 MiB over 3 slices of 2 MiB + rounding lose at most a chunk or two).
        let r5 = capacity(Level::Raid5, &[1, 1, 2]);
        assert!(r5 <= 2 * unit && r5 >= 2 * unit - 8 * U, "{r5}");
        let r6 = capacity(Level::Raid6, &[1, 1, 1, 1]);
        assert!(r6 <= 2 * unit && r6 >= 2 * unit - 8 * U, "{r6}");
    }

    /// Single chunks go one by one to the member with the most free space: the members
    /// end up equally full in bytes left, whatever their sizes.
    #[test]
    fn single_goes_to_the_emptiest_member() {
        let members: Vec<MemberSpace> = [10u64, 30, 20]
            .iter()
            .enumerate()
            .map(|(i, s)| MemberSpace {
                member: i as u16,
                start: 0,
                end: s * 4 * U,
            })
            .collect();
        let mut alloc = Allocator::new(&members, &ChunkMap::new(4 * U, 0));
        let t = Template {
            level: Level::Single,
            copies: 1,
            stripe_unit: 64 << 10,
        };
        let mut on = [0; 3];
        for _ in 0..25 {
            let c = alloc.allocate(&t, 4 * U, &[0, 1, 2]).unwrap();
            assert_eq!((c.slices.len(), c.slice_len), (1, 4 * U));
            on[c.slices[0].member as usize] += 1;
        }
        // 30 → 20 on the largest first (10 chunks), then the two alternate (ties to the
        // lower index): 8 and 7 more; the small one is not touched yet.
        assert_eq!(on, [0, 18, 7]);
        for _ in 25..60 {
            alloc.allocate(&t, 4 * U, &[0, 1, 2]).unwrap();
        }
        assert!(alloc.allocate(&t, 4 * U, &[0, 1, 2]).is_none());
        assert_eq!((0..3).map(|m| alloc.free_bytes(m)).sum::<u64>(), 0);
    }

    #[test]
    fn slices_never_share_a_member_and_never_overlap() {
        let members: Vec<MemberSpace> = (0..5)
            .map(|i| MemberSpace {
                member: i,
                start: 3 * U,
                end: (40 + 7 * i as u64) * U,
            })
            .collect();
        let mut map = ChunkMap::new(4 * U, 64);
        let t = Template {
            level: Level::Raid6,
            copies: 1,
            stripe_unit: 64 << 10,
        };
        let ids: Vec<u16> = (0..5).collect();
        let mut alloc = Allocator::new(&members, &map);
        for i in 0..64 {
            let Some(c) = alloc.allocate(&t, 4 * U, &ids) else {
                break;
            };
            let mut ms: Vec<u16> = c.slices.iter().map(|s| s.member).collect();
            ms.sort();
            ms.dedup();
            assert_eq!(ms.len(), c.slices.len());
            map.chunks[i] = Some(Arc::new(c));
        }
        // Rebuilding the allocator from the map sees the same free space.
        let again = Allocator::new(&members, &map);
        for m in 0..5 {
            assert_eq!(again.free_bytes(m), alloc.free_bytes(m));
        }
        let mut ext: Vec<(u16, u64, u64)> = map
            .allocated()
            .flat_map(|(_, c)| {
                c.slices
                    .iter()
                    .map(|s| (s.member, s.offset, s.offset + c.slice_len))
                    .collect::<Vec<_>>()
            })
            .collect();
        ext.sort();
        for w in ext.windows(2) {
            assert!(w[0].0 != w[1].0 || w[0].2 <= w[1].1, "overlap {w:?}");
        }
    }

    /// `release` gives the free lists `new` builds from the map without the chunk, on maps
    /// with holes, mixed profiles and members of several sizes.
    #[test]
    fn release_is_new_without_the_chunk() {
        let members: Vec<MemberSpace> = (0..6)
            .map(|i| MemberSpace {
                member: i,
                start: U,
                end: (30 + 5 * i as u64) * U + 12345,
            })
            .collect();
        let t = |level: Level, copies: usize| Template {
            level,
            copies,
            stripe_unit: 64 << 10,
        };
        let templates = [
            t(Level::Raid0, 1),
            t(Level::Raid5, 1),
            t(Level::Raid1, 2),
            t(Level::Raid6, 1),
            t(Level::Raid10, 2),
            t(Level::Single, 1),
        ];
        let n = 80;
        let mut map = ChunkMap::new(4 * U, n);
        let mut alloc = Allocator::new(&members, &map);
        for i in 0..n {
            // Narrower candidate sets now and then, so members fill unevenly.
            let ids: Vec<u16> = (0..6)
                .filter(|m| !(i + *m as usize).is_multiple_of(7))
                .collect();
            if let Some(c) = alloc.allocate(&templates[i % templates.len()], 4 * U, &ids) {
                map.chunks[i] = Some(Arc::new(c));
            }
        }
        // Holes: drop every third chunk, so released slices meet free space on either side.
        for i in (0..n).step_by(3) {
            map.chunks[i] = None;
        }
        assert!(map.allocated().count() > 20);
        let base = Allocator::new(&members, &map);
        for (idx, c) in map.allocated() {
            let mut without = map.clone();
            without.chunks[idx] = None;
            let mut released = base.clone();
            released.release(c);
            assert_eq!(released, Allocator::new(&members, &without), "chunk {idx}");
        }
        // Releasing everything leaves each member's whole area free.
        let mut all = base.clone();
        for (_, c) in map.allocated() {
            all.release(c);
        }
        assert_eq!(all, Allocator::new(&members, &ChunkMap::new(4 * U, n)));
        // `reserve` is the inverse: taking each chunk back gives the full map's free lists.
        for (idx, c) in map.allocated() {
            let mut without = map.clone();
            without.chunks[idx] = None;
            let mut reserved = Allocator::new(&members, &without);
            reserved.reserve(c);
            assert_eq!(reserved, base, "chunk {idx}");
        }
        let mut none = Allocator::new(&members, &ChunkMap::new(4 * U, n));
        for (_, c) in map.allocated() {
            none.reserve(c);
        }
        assert_eq!(none, base);
    }
}
