//! The dirty set of a transaction group: written bytes not yet committed, as
//! non-overlapping extents of whole 4 KiB blocks, each one buffer.
//!
//! A write of whole blocks is kept as the buffer it came in (no copy); a newer write cuts
//! the extents it overlaps (dropping those it covers, whose buffers go back to the caller
//! for reuse). Extents are never merged: a commit takes them in order and lays the pieces
//! of one stripe row side by side (see `txg.rs`), so adjacent extents cost no copy either.
//! A first version kept one boxed 4 KiB block per hash-map entry: sequential 1 MiB writes
//! then spent about a quarter of the server's time copying into the blocks, hashing and
//! growing the map.

use crate::units::BLOCK;
use std::collections::BTreeMap;

#[derive(Default)]
pub(crate) struct DirtySet {
    /// Extents by start (volume byte offset, block-aligned); lengths are whole blocks.
    map: BTreeMap<u64, Vec<u8>>,
    bytes: u64,
}

impl DirtySet {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The extents in volume order: (start, bytes).
    pub fn extents(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.map.iter().map(|(&s, d)| (s, d.as_slice()))
    }

    /// The buffers held, given up.
    pub fn into_buffers(self) -> impl Iterator<Item = Vec<u8>> {
        self.map.into_values()
    }

    /// Whether the block starting at volume offset `off` (block-aligned) is held.
    pub fn contains(&self, off: u64) -> bool {
        self.map
            .range(..=off)
            .next_back()
            .is_some_and(|(&s, d)| s + d.len() as u64 > off)
    }

    /// The held pieces of `[lo, hi)`, in order: (volume offset, bytes).
    pub fn overlapping(&self, lo: u64, hi: u64) -> impl Iterator<Item = (u64, &[u8])> {
        // The extent starting at or before `lo` may reach into the range.
        let first = self.map.range(..=lo).next_back().map_or(lo, |(&s, _)| s);
        self.map.range(first..hi).filter_map(move |(&s, d)| {
            let e = s + d.len() as u64;
            let (a, b) = (s.max(lo), e.min(hi));
            (a < b).then(|| (a, &d[(a - s) as usize..(b - s) as usize]))
        })
    }

    /// Adds `data` (whole blocks) at `start` (block-aligned) over whatever is held there.
    /// Buffers no longer needed go to `spare`.
    pub fn insert(&mut self, start: u64, data: Vec<u8>, spare: &mut impl FnMut(Vec<u8>)) {
        debug_assert!(start.is_multiple_of(BLOCK) && (data.len() as u64).is_multiple_of(BLOCK));
        if data.is_empty() {
            return;
        }
        let end = start + data.len() as u64;
        self.cut(start, end, spare);
        self.bytes += data.len() as u64;
        self.map.insert(start, data);
    }

    /// Adds `data` at `start` only where nothing is held (what is held is newer).
    pub fn insert_under(&mut self, start: u64, data: &[u8]) {
        let end = start + data.len() as u64;
        let held: Vec<(u64, u64)> = self
            .overlapping(start, end)
            .map(|(o, d)| (o, o + d.len() as u64))
            .collect();
        let mut at = start;
        for (hs, he) in held.into_iter().chain(std::iter::once((end, end))) {
            if at < hs {
                let piece = data[(at - start) as usize..(hs - start) as usize].to_vec();
                self.bytes += piece.len() as u64;
                self.map.insert(at, piece);
            }
            at = at.max(he);
        }
    }

    /// Forgets what is held in `[start, end)` (its chunks are being freed).
    pub fn discard(&mut self, start: u64, end: u64) {
        self.cut(start, end, &mut drop);
    }

    /// Removes `[start, end)` from the extents held.
    fn cut(&mut self, start: u64, end: u64, spare: &mut impl FnMut(Vec<u8>)) {
        let first = self
            .map
            .range(..start)
            .next_back()
            .filter(|(&s, d)| s + d.len() as u64 > start)
            .map_or(start, |(&s, _)| s);
        let hit: Vec<u64> = self.map.range(first..end).map(|(&s, _)| s).collect();
        for s in hit {
            let mut d = self.map.remove(&s).expect("extent");
            let e = s + d.len() as u64;
            self.bytes -= d.len() as u64;
            if s < start && e > end {
                // The new extent falls inside this one: keep its head and tail.
                let tail = d[(end - s) as usize..].to_vec();
                d.truncate((start - s) as usize);
                self.bytes += (d.len() + tail.len()) as u64;
                self.map.insert(s, d);
                self.map.insert(end, tail);
            } else if s < start {
                d.truncate((start - s) as usize);
                self.bytes += d.len() as u64;
                self.map.insert(s, d);
            } else if e > end {
                d.drain(..(end - s) as usize);
                self.bytes += d.len() as u64;
                self.map.insert(end, d);
            } else {
                spare(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const B: u64 = BLOCK;

    fn model_check(set: &DirtySet, model: &BTreeMap<u64, u8>) {
        let mut seen = BTreeMap::new();
        let mut prev_end = 0;
        for (s, d) in set.extents() {
            assert!(s >= prev_end, "overlap");
            assert!(!d.is_empty());
            prev_end = s + d.len() as u64;
            for (k, blk) in d.chunks(B as usize).enumerate() {
                assert!(blk.iter().all(|&x| x == blk[0]));
                seen.insert(s / B + k as u64, blk[0]);
            }
        }
        assert_eq!(&seen, model);
        assert_eq!(set.bytes(), model.len() as u64 * B);
        for b in 0..64 {
            assert_eq!(set.contains(b * B), model.contains_key(&b));
        }
    }

    proptest! {
        #[test]
        fn extents_match_a_block_model(
            ops in proptest::collection::vec((0u64..48, 1u64..12, any::<bool>()), 1..40)
        ) {
            let mut set = DirtySet::default();
            let mut model = BTreeMap::new();
            for (n, (b, len, under)) in ops.into_iter().enumerate() {
                let v = n as u8 + 1;
                let data = vec![v; (len * B) as usize];
                if under {
                    set.insert_under(b * B, &data);
                    for k in b..b + len {
                        model.entry(k).or_insert(v);
                    }
                } else {
                    set.insert(b * B, data, &mut |_| {});
                    for k in b..b + len {
                        model.insert(k, v);
                    }
                }
                model_check(&set, &model);
                // Pieces of a window are exactly the model's blocks in it, in order.
                let (lo, hi) = (b.saturating_sub(3) * B + 100, (b + len + 3) * B - 7);
                let mut got = vec![0u8; (hi - lo) as usize];
                let mut at = lo;
                for (o, d) in set.overlapping(lo, hi) {
                    prop_assert!(o >= at && o + d.len() as u64 <= hi);
                    at = o + d.len() as u64;
                    got[(o - lo) as usize..(at - lo) as usize].copy_from_slice(d);
                }
                let want: Vec<u8> = (lo..hi)
                    .map(|o| model.get(&(o / B)).copied().unwrap_or(0))
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
