//! The smallest shared pieces: the block size, the unit of planned member I/O, time and
//! range helpers. Every layer may use them; they use nothing of the engine.

/// The block checksums cover and dirty sets track: 4 KiB.
pub const BLOCK: u64 = 4096;
/// [`BLOCK`] as a buffer length.
pub const BLOCK_LEN: usize = BLOCK as usize;

/// One positioned write to one member: the unit of a plan, of the journal, and of replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberWrite {
    pub member: u16,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sorts and merges overlapping or touching `(offset, len)` ranges.
pub fn merge_ranges(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (o, l) in v {
        match out.last_mut() {
            Some((po, pl)) if *po + *pl >= o => *pl = (*pl).max(o + l - *po),
            _ => out.push((o, l)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_when_they_touch_or_overlap() {
        assert_eq!(
            merge_ranges(vec![(10, 5), (0, 4), (4, 2), (14, 10), (40, 1)]),
            vec![(0, 6), (10, 14), (40, 1)]
        );
        assert!(merge_ranges(Vec::new()).is_empty());
    }
}
